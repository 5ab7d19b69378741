//! The `piper` binary: `cli::main`, started without std's `main` wrapper.
//!
//! std's wrapper sets up stack-overflow reporting for the main thread, and
//! that reads and parses `/proc/self/maps`: a tenth of the instructions of
//! a one-step `piper exec`, and ~25 page faults. What else it does that
//! matters here is done below: closed standard streams are reopened on
//! `/dev/null`, and SIGPIPE is ignored (a closed pipe is an error to
//! report, not a kill; std still starts steps with the default SIGPIPE).
//! The cost: a stack overflow is a plain SIGSEGV instead of std's message.
#![no_main]

use std::ffi::{c_char, c_int};

#[unsafe(no_mangle)]
extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    // SAFETY: at start-up, before any other thread exists.
    unsafe {
        reopen_closed_standard_streams();
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // `exit` flushes std's stdout first, as std's own `main` would.
    std::process::exit(piper::cli::main())
}

/// A standard stream that was closed when piper started would otherwise
/// be the first file piper opens: its output would land in, say, the
/// configuration cache. `open` takes the lowest free descriptor.
unsafe fn reopen_closed_standard_streams() {
    for fd in 0..3 {
        // SAFETY: plain syscalls on descriptors, no memory handed over.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
                && libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) == -1
            {
                libc::abort();
            }
        }
    }
}
