//! {{name}}: a pgws guest. It forwards every notification unchanged; change `on_notify` to decide
//! what each message becomes.

wit_bindgen::generate!({ path: "wit", world: "pgws:guest/filter" });

use exports::pgws::guest::handler::Guest;
use pgws::guest::types::{Notification, Verdict};

struct Component;

impl Guest for Component {
    fn on_notify(n: Notification) -> Verdict {
        // `n.tenant`, `n.topic`, `n.channel`, and `n.body` (JSON text, exactly as sent). Besides
        // `Forward`: `Drop`, `Replace(json)`, `Route(vec![Route { topic, body }])`, `Reject(reason)`.
        let _ = n;
        Verdict::Forward
    }
}

export!(Component);
