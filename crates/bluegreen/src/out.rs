//! The CLI's standard output. A reader that goes away (`bluegreen history |
//! head -1`) ends the command quietly: every write returns its error and
//! `main` turns a closed stdout into exit 0, without a message.
//!
//! Not by restoring SIGPIPE's default action: that takes `unsafe` (this
//! crate forbids it) and is process-wide, while `serve`, `app` and `demo`
//! write to sockets and pipes whose reader may go without ending them (and
//! `demo` must stop the processes it started before it exits).

use std::io::{ErrorKind, Write};

/// `println!` to stdout, returning the write's error (`?` it).
macro_rules! outln {
    () => {
        $crate::out::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` to stdout, returning the write's error (`?` it).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write_fmt(format_args!($($arg)*))
    };
}

/// The error of a write to a stdout nobody reads any more.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Marks a broken pipe as ours (stdout's), not a socket's: a request that
/// met a closed connection is still an error.
fn mark(e: std::io::Error) -> std::io::Error {
    if e.kind() == ErrorKind::BrokenPipe {
        std::io::Error::new(ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

/// Writes formatted text to stdout.
pub fn write_fmt(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.flush()).map_err(mark)
}

/// Writes bytes to stdout (a whole generated document at once).
pub fn bytes(b: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(b).and_then(|()| out.flush()).map_err(mark)
}

/// True when `e` comes from writing to a closed stdout.
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_is_quiet() {
        let ours: anyhow::Error = mark(ErrorKind::BrokenPipe.into()).into();
        assert!(is_closed(&ours));
        assert!(is_closed(&ours.context("printing the status")));
        // A socket's broken pipe (a request to the router) is an error.
        let socket: anyhow::Error = std::io::Error::from(ErrorKind::BrokenPipe).into();
        assert!(!is_closed(&socket));
    }
}
