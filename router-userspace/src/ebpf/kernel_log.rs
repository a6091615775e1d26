//! Forwards the XDP program's log records (aya-log's `AYA_LOGS` ring buffer) into `tracing`
//! under the target `scope_router::xdp`, on a thread of its own.
//!
//! A thread rather than a runtime task: steering starts before `run` builds the async
//! runtime, and records must not wait for it. The ring buffer belongs to this process
//! (never pinned): a restarted router loads a fresh one with its programs, and records the
//! old programs wrote after their router died are lost with it.

use std::{
    io::{self, PipeReader, PipeWriter},
    os::fd::{AsRawFd as _, RawFd},
    thread::{self, JoinHandle},
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use tracing_log::LogTracer;

/// Why the kernel log cannot be forwarded. Steering works without it; drops are still
/// counted (`scope-router status`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum KernelLogError {
    /// The object has no `AYA_LOGS` map, or the ring buffer cannot be opened.
    #[error(
        "opening the XDP log ring buffer: {0} (the embedded eBPF object may be out of date; rebuild)"
    )]
    RingBuffer(#[from] aya_log::Error),
    /// The reader thread or its stop pipe could not be created.
    #[error("starting the XDP log reader thread: {0}")]
    Thread(#[from] io::Error),
}

/// The running forwarder; dropping it forwards what is left in the ring buffer and stops
/// the thread.
#[derive(Debug)]
pub(crate) struct KernelLog {
    // Closing this end wakes the reader (POLLHUP on its end), which then exits.
    stop: Option<PipeWriter>,
    reader: Option<JoinHandle<()>>,
}

impl KernelLog {
    /// Takes the `AYA_LOGS` map out of `ebpf` and forwards its records into the `tracing`
    /// subscriber that is current on the calling thread (the global one in the router; a
    /// test's scoped one in tests).
    pub(crate) fn start(ebpf: &mut Ebpf) -> Result<Self, KernelLogError> {
        // LogTracer turns each `log` record aya-log produces into a `tracing` event with
        // the record's target, so `RUST_LOG` filters it like any other target.
        let logger = EbpfLogger::init_with_logger(ebpf, LogTracer::new())?;
        let (wake, stop) = io::pipe()?;
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let reader = thread::Builder::new()
            .name("xdp-log".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || forward(logger, &wake));
            })?;
        Ok(Self {
            stop: Some(stop),
            reader: Some(reader),
        })
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(reader) = self.reader.take()
            && reader.join().is_err()
        {
            tracing::warn!("the XDP log reader thread panicked; kernel drop lines were lost");
        }
    }
}

/// Forwards records whenever the ring buffer has some, until `wake` reports its writer
/// closed; a last pass forwards what the programs wrote before that.
fn forward(mut logger: EbpfLogger<LogTracer>, wake: &PipeReader) {
    let ring: RawFd = logger.as_raw_fd();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: ring,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(
                "polling the XDP log ring buffer failed, no more kernel drop lines: {err}"
            );
            return;
        }
        logger.flush();
        if fds[1].revents != 0 {
            return;
        }
    }
}
