//! Durations as people type them on command lines: `500ms`, `5s`, `2m`, `1h`.

use std::time::Duration;

/// Parses a duration as humantime reads one: `500ms`, `5s`, `2m`, `1h`,
/// fractions (`1.5s`) or several joined (`1m 30s`). A bare number has no
/// unit and is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "{} is not a duration ({e}); write a number and a unit: 500ms, 5s, 2m or 1h",
            crate::quote(text)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_and_mistakes_say_how_to_write_one() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(
            parse_duration("5")
                .unwrap_err()
                .contains("500ms, 5s, 2m or 1h")
        );
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }
}
