//! Ctrl-C and SIGTERM for the `pushdeploy-local` binary: the signals are blocked in every
//! thread and taken by one thread with `sigwait`, which wakes the main task; the main task
//! then drops the stack, which stops everything in order. (Children unblock them again.)

use std::sync::Arc;

use tokio::sync::Notify;

/// Blocks SIGINT and SIGTERM in this thread and every thread started after it, and returns
/// what is notified when one arrives. Call first thing in `main`, before any thread starts.
pub fn take_interrupts() -> Arc<Notify> {
    let notify = Arc::new(Notify::new());
    // SAFETY: plain signal-set manipulation on a zeroed sigset_t owned by this frame.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let wake = notify.clone();
    std::thread::Builder::new()
        .name("pushdeploy-local-signals".into())
        .spawn(move || {
            loop {
                let mut signal = 0;
                // SAFETY: `set` is a valid, initialised signal set; `signal` is written by sigwait.
                if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                    eprintln!("\ninterrupted: stopping the local stack…");
                    wake.notify_one();
                }
            }
        })
        .expect("starting the signal thread");
    notify
}
