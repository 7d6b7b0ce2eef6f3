//! The log lines of the servers a test runs in its own process, for what a
//! server does that no answer of its shows (that it opened a session).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Every log line (INFO and up) emitted on this thread while it lives. A
/// `#[tokio::test]` runs its runtime, and so every task of the servers it
/// starts, on the test's own thread: these are that test's servers' lines,
/// and no other test's.
pub struct Logs {
    text: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    /// Starts capturing; start it before the servers.
    pub fn capture() -> Logs {
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = text.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        Logs {
            text,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        let text = self.text.lock().unwrap();
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// Appends what the formatter writes to the captured text.
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
