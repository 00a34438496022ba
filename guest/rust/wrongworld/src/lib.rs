//! A valid component of the wrong world (it exports `other:thing/greeter`, not `pgws:guest/handler`),
//! for testing that the host refuses it and keeps the running guest.

wit_bindgen::generate!({ path: "wit", world: "greeting" });

struct Greeter;

impl exports::other::thing::greeter::Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Greeter);
