//! Forwards every notification unchanged: the smallest useful guest, and the baseline for the cost
//! of a guest call.

wit_bindgen::generate!({ path: "../../../wit", world: "pgws:guest/filter" });

use exports::pgws::guest::handler::Guest;
use pgws::guest::types::{Notification, Verdict};

struct Passthrough;

impl Guest for Passthrough {
    fn on_notify(_n: Notification) -> Verdict {
        Verdict::Forward
    }
}

export!(Passthrough);
