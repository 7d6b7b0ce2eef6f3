//! Client input as errors and logs quote it: in short. A request may carry
//! a megabyte in one field; echoing it whole would put that megabyte in a
//! gRPC status header (which standard clients then refuse) and in the log.

use std::fmt;

/// Bytes of client input an error or log line quotes at most.
pub const QUOTE_LIMIT: usize = 100;

/// `text` for an error or a log line: Debug-quoted like `{:?}`, cut to its
/// first [`QUOTE_LIMIT`] bytes (on a character boundary) with an ellipsis
/// and the full length when longer.
pub fn quote(text: &str) -> Quoted<'_> {
    Quoted(text)
}

/// See [`quote`].
#[derive(Clone, Copy)]
pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if text.len() <= QUOTE_LIMIT {
            return write!(f, "{text:?}");
        }
        let mut end = QUOTE_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{:?}… ({} bytes)", &text[..end], text.len())
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole() {
        assert_eq!(quote("web@1.x").to_string(), "\"web@1.x\"");
    }

    #[test]
    fn long_input_is_cut_with_an_ellipsis_and_its_length() {
        let long = "é".repeat(1_000_000);
        let shown = quote(&long).to_string();
        assert!(shown.len() < QUOTE_LIMIT + 40, "{} bytes", shown.len());
        assert!(shown.ends_with("… (2000000 bytes)"), "{shown}");
    }
}
