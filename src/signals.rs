//! Signal handling beyond Pingora's own (bottom layer: process-wide flags). Pingora acts on
//! SIGQUIT, SIGTERM and SIGINT; an unhandled SIGHUP would kill the process. The handlers here
//! only set flags (`signal_hook::flag`, async-signal-safe, no `unsafe` of ours) and are
//! installed first thing in `main`, so they survive daemonising:
//! - SIGHUP requests an in-process reload (consumed by the reload service);
//! - SIGQUIT (graceful upgrade) also marks the process as draining, so that every response from
//!   then on closes its keep-alive connection. Pingora keeps accepting for a few seconds after
//!   SIGQUIT and then drops idle keep-alive connections; closing them after a response instead
//!   means clients reconnect (to the new process) rather than racing a close.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use signal_hook::consts::{SIGHUP, SIGQUIT};

static RELOAD_REQUESTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(Default::default);
static DRAINING: LazyLock<Arc<AtomicBool>> = LazyLock::new(Default::default);

/// Installs the SIGHUP and SIGQUIT flag handlers.
pub fn install() -> std::io::Result<()> {
    signal_hook::flag::register(SIGHUP, Arc::clone(&RELOAD_REQUESTED))?;
    signal_hook::flag::register(SIGQUIT, Arc::clone(&DRAINING))?;
    Ok(())
}

/// Whether a reload was requested since the last call (clears the request).
pub fn take_reload_request() -> bool {
    RELOAD_REQUESTED.swap(false, Ordering::SeqCst)
}

/// Whether this process is handing over to a new one and should close connections.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}
