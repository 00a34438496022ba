//! What `pgws guest check` reports about a component: whether the server would load it (compiled,
//! linked against what pgws offers, instantiated once under the configured limits), which world it
//! fits by the hooks it exports, what it imports, and what it costs. It does not run hooks.

use std::time::Duration;

use super::instance;
use super::runtime::{GuestRuntime, LoadError};

/// A component the server would load.
#[derive(Debug)]
pub struct Inspection {
    /// `filter`, `interactive` or `gatekeeper`: the smallest world holding every hook it exports.
    pub world: &'static str,
    /// `on-notify`, then `on-client-message` and `authorize` when exported.
    pub hooks: Vec<&'static str>,
    /// Every interface it imports, as `package:name/interface@version`.
    pub imports: Vec<String>,
    pub size: usize,
    pub version: String,
    pub compile_time: Duration,
}

/// Checks `bytes` exactly as the server does before a guest may serve; the reason when it would
/// not.
pub fn inspect(runtime: &GuestRuntime, bytes: &[u8]) -> Result<Inspection, LoadError> {
    let module = runtime.compile(bytes)?;
    instance::check(runtime, &module).map_err(LoadError::Instantiate)?;
    let imports = module
        .pre
        .component()
        .component_type()
        .imports(&runtime.engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let mut hooks = vec!["on-notify"];
    if module.has_client_handler() {
        hooks.push("on-client-message");
    }
    if module.has_authorizer() {
        hooks.push("authorize");
    }
    let world = if module.has_authorizer() {
        "gatekeeper"
    } else if module.has_client_handler() {
        "interactive"
    } else {
        "filter"
    };
    Ok(Inspection {
        world,
        hooks,
        imports,
        size: module.size,
        version: module.version.clone(),
        compile_time: module.compile_time,
    })
}
