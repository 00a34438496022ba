//! The wasmtime engine narrowed to what pgws needs: compile, type-check and pre-link guests, and keep
//! the epoch clock that enforces call deadlines.
//!
//! Owns the [`Engine`], the [`Linker`] (WASI preview 2 with no capabilities, plus the `log` import)
//! and the on-disk cache of compiled code. Produces [`GuestModule`]s: compiled, checked against the
//! `filter` world, ready to instantiate cheaply. It does not decide which tenant uses which module
//! (`registry`) or run calls (`instance`).

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Cache, CacheConfig, Config, Engine};

use super::bindings::{AuthorizerIndices, ClientHandlerIndices, Gatekeeper, HandlerIndices};
use super::state::GuestState;

/// How often the epoch clock ticks. Deadlines are whole ticks, so this is their resolution.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Limits applied to every guest call.
#[derive(Debug, Clone)]
pub struct GuestLimits {
    /// Wall-clock deadline of one call.
    pub timeout: Duration,
    /// Most linear memory an instance may have, in bytes.
    pub memory_bytes: usize,
    /// Most bytes of bodies one call may return.
    pub max_output: usize,
    /// Most routes one call may return.
    pub max_routes: usize,
}

impl From<&crate::config::GuestSettings> for GuestLimits {
    fn from(s: &crate::config::GuestSettings) -> Self {
        GuestLimits {
            timeout: s.timeout(),
            memory_bytes: s.memory_bytes(),
            max_output: s.guest_max_output,
            max_routes: s.guest_max_routes,
        }
    }
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            timeout: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            max_output: 256 << 10,
            max_routes: 32,
        }
    }
}

/// Why a component was refused. The old guest, if any, keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly component: {0:#}")]
    Compile(wasmtime::Error),
    #[error("does not fit the pgws:guest/filter world (or one that includes it): {0:#}")]
    WrongWorld(wasmtime::Error),
    #[error("failed to instantiate: {0:#}")]
    Instantiate(wasmtime::Error),
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a later change to this guest came first; this one was dropped")]
    Superseded,
}

/// A compiled, type-checked guest, ready to instantiate. Shared by every worker that runs it.
pub struct GuestModule {
    pub(super) pre: InstancePre<GuestState>,
    pub(super) handler: HandlerIndices,
    /// Present when the guest exports `client-handler`.
    pub(super) client_handler: Option<ClientHandlerIndices>,
    /// Present when the guest exports `authorizer`.
    pub(super) authorizer: Option<AuthorizerIndices>,
    /// Short hex digest of the component bytes; names the version in logs and the admin API.
    pub version: String,
    pub size: usize,
    pub loaded_at: SystemTime,
    pub compile_time: Duration,
    /// Whether the compiled code came from `--guest-cache` rather than from compiling.
    pub from_cache: bool,
    /// Failed calls of this version, for the admin listing.
    pub(super) failures: AtomicU64,
}

impl GuestModule {
    /// Whether the guest exports `on-client-message`.
    pub fn has_client_handler(&self) -> bool {
        self.client_handler.is_some()
    }

    /// Whether the guest exports `authorize`.
    pub fn has_authorizer(&self) -> bool {
        self.authorizer.is_some()
    }
}

impl std::fmt::Debug for GuestModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestModule")
            .field("version", &self.version)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The engine, linker and limits every guest shares.
#[derive(Clone)]
pub struct GuestRuntime {
    pub(super) engine: Engine,
    /// The compiled-code cache, if any; its hit count tells a cached load from a compile.
    cache: Option<Cache>,
    linker: Arc<Linker<GuestState>>,
    pub(super) limits: GuestLimits,
}

impl GuestRuntime {
    /// Builds the engine and starts the epoch clock. `cache_dir` keeps compiled code across restarts.
    pub fn new(limits: GuestLimits, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // Calls are async (so a slow guest yields its thread every tick), but the component
            // model's own async (tasks, streams) is not used, and enabling it doubles the cost of
            // each call.
            .concurrency_support(false)
            // A trap is logged as one line naming its cause; frame-by-frame wasm backtraces of
            // stripped guests say nothing more and cost time on every trap.
            .wasm_backtrace_max_frames(None)
            .parallel_compilation(true);
        let cache = match cache_dir {
            Some(dir) => {
                let mut cache = CacheConfig::new();
                cache.with_directory(dir);
                Some(Cache::new(cache)?)
            }
            None => None,
        };
        config.cache(cache.clone());
        let engine = Engine::new(&config)?;

        let mut linker = Linker::<GuestState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Gatekeeper::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("pgws-epoch".into())
            .spawn(move || {
                // Stops by itself once the last engine handle is gone.
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;

        Ok(GuestRuntime {
            engine,
            cache,
            linker: Arc::new(linker),
            limits,
        })
    }

    /// The limits every call is held to.
    pub fn limits(&self) -> &GuestLimits {
        &self.limits
    }

    /// Deadline of one call in epoch slices: the guest yields once per tick and is interrupted when
    /// it has run this many (at least one full tick).
    pub(super) fn deadline_slices(&self) -> u64 {
        (self.limits.timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
    }

    /// Compiles and checks a component. Slow (milliseconds to seconds): never call it on the message
    /// path. A component is accepted only if it compiles, links against exactly what pgws offers and
    /// exports the `filter` world; the registry also instantiates it once (`instance::check`) before
    /// it may serve.
    pub fn compile(&self, bytes: &[u8]) -> Result<GuestModule, LoadError> {
        let started = Instant::now();
        let hits = self.cache.as_ref().map(Cache::cache_hits);
        let component = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
        // Compiles run one at a time per guest change; one that overlaps another may be told
        // apart wrongly, which costs only this informational flag.
        let from_cache = self.cache.as_ref().map(Cache::cache_hits) > hits;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(LoadError::WrongWorld)?;
        let handler = HandlerIndices::new(&pre).map_err(LoadError::WrongWorld)?;
        Ok(GuestModule {
            handler,
            client_handler: ClientHandlerIndices::new(&pre).ok(),
            authorizer: AuthorizerIndices::new(&pre).ok(),
            pre,
            version: short_digest(bytes),
            size: bytes.len(),
            loaded_at: SystemTime::now(),
            compile_time: started.elapsed(),
            from_cache,
            failures: AtomicU64::new(0),
        })
    }
}

/// FNV-1a 64 of the bytes, in hex: enough to tell versions apart in logs; not a security measure.
pub(super) fn short_digest(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}
