//! Durations as people type them on command lines: `500ms`, `5s`, `2m`, `1h`.

use std::time::Duration;

/// Parses `500ms`, `5s`, `2m` or `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let hint = || {
        format!("{text:?} is not a duration; write a whole number and a unit: 500ms, 5s, 2m or 1h")
    };
    let n: u64 = number.parse().map_err(|_| hint())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(hint),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(hint),
        _ => Err(hint()),
    }
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
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
    }
}
