//! Where log lines go: standard output, one `write(2)` per line, no lock.
//!
//! `std::io::stdout()` serializes writers on a mutex; with one line per
//! request the workers queued on it (futex waits in every profile). A line of
//! at most `PIPE_BUF` bytes written in one call reaches a pipe or an
//! `O_APPEND` file whole, so short lines need no lock; longer ones (rare:
//! a long error chain) take one so they cannot interleave with each other.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

/// Lines up to this many bytes are written whole by one `write(2)` (POSIX `PIPE_BUF`).
const ATOMIC_LINE: usize = 4096;

/// Standard output as a `MakeWriter` for the fmt layer.
#[derive(Clone, Copy, Default)]
pub(crate) struct Stdout;

/// A duplicate of fd 1: a `File` writes without the `Stdout` mutex.
fn stdout_file() -> Option<&'static File> {
    static FILE: OnceLock<Option<File>> = OnceLock::new();
    FILE.get_or_init(|| {
        io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(File::from)
    })
    .as_ref()
}

/// Serializes lines too long to be written atomically.
static LONG_LINES: Mutex<()> = Mutex::new(());

/// Writes one formatted line (the fmt layer hands each event over in one `write_all`).
pub(crate) struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, line: &[u8]) -> io::Result<()> {
        let Some(mut file) = stdout_file() else {
            return io::stdout().write_all(line);
        };
        if line.len() <= ATOMIC_LINE {
            return file.write_all(line);
        }
        let _serialized = LONG_LINES.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(line)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter
    }
}
