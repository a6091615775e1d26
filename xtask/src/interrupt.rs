//! Ctrl-C / SIGTERM become a flag instead of killing xtask, so teardown code (the lab's
//! namespaces, a router started by `run`) always gets to run.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: the one thing that is async-signal-safe here.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handlers. Children in our process group still receive Ctrl-C and stop;
/// the command that ran them then fails and the error path unwinds through Drop.
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an AtomicBool, which is async-signal-safe.
        unsafe {
            libc::signal(signal, handler);
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Err once the user asked to stop; call between steps.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted (Ctrl-C or SIGTERM)");
    }
    Ok(())
}
