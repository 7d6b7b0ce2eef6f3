//! node-semver ranges (`1.2.x`, `^1.2`, `>=1.0.0 <2.0.0 || 3.x`), parsed
//! here because no crate reads them as npm does.
//!
//! The parser takes the steps node's `semver` package (7.x, default options)
//! takes, in its order, so that it accepts and rejects exactly what npm does,
//! quirks included: whitespace is collapsed, the range is split at `||`,
//! build metadata is dropped, a hyphen range becomes two bounds, the space
//! after an operator goes, and each word is desugared the way npm desugars it
//! (`^1.2.3` becomes `>=1.2.3 <2.0.0-0`, `1.x` becomes `>=1.0.0 <2.0.0-0`)
//! into comparators. Each step is one pass over its input, so parsing is
//! linear in the length of the range, which is capped at [`MAX_RANGE_LEN`]
//! before anything else is done.
//!
//! A version matches when every comparator of some alternative holds and, if
//! the version is a prerelease, a comparator of that alternative names a
//! prerelease of the same major.minor.patch. An alternative that is `*` (or
//! empty, or `x`, or `>=0.0.0`) makes the whole range `*`, as in npm, so
//! `* || 1.2.3-beta` matches no prerelease.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use semver::{BuildMetadata, Prerelease, Version};

/// Longest range accepted, in bytes; a longer one is refused before parsing.
pub const MAX_RANGE_LEN: usize = 1024;

/// The largest version number npm accepts (JavaScript's MAX_SAFE_INTEGER).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// npm's longest version (`MAX_LENGTH`): a comparator's version is at most this.
const MAX_VERSION_LEN: usize = 256;

/// npm matches numbers with `0|[1-9]\d{0,256}`: at most this many digits.
const MAX_NUMBER_DIGITS: usize = MAX_VERSION_LEN + 1;

/// npm's `MAX_SAFE_BUILD_LENGTH`: the longest build identifier, and the
/// longest tail of a prerelease identifier after its first non-digit.
const MAX_IDENTIFIER_TAIL: usize = MAX_VERSION_LEN - 6;

const TOO_LONG: &str = "is too long: a range has at most 1024 bytes";
const NOT_ASCII: &str =
    "is not a character a range can have (ASCII letters, digits, spaces and . - + * < > = ^ ~ |)";
const NEEDS_VERSION: &str = "needs a version after it";
const HYPHEN_SIDE_MISSING: &str = "is a hyphen with a side missing; a hyphen range is a version, \
     a space, `-`, a space and a version, such as 1.2.3 - 2.3.4";
const HYPHEN_SIDE: &str = "is a hyphen range with a side npm does not accept; write two versions \
     such as 1.2.3 - 2.3.4 (a side may start with `v`, not `=`)";
const TWO_OPERATORS: &str = "has two operators; write one, such as >=1.2.3";
const NOT_A_VERSION: &str =
    "is not a version: each part must be a number without leading zeros, or x, X or *";
const BAD_CHARACTER: &str = "has a character no version has (a version has letters, digits, \
     `.`, `-`, `+` and wildcards, after an operator)";
const TOO_MANY_PARTS: &str = "has more than three version parts";
const EMPTY_PART: &str = "has an empty version part (a stray `.`)";
const WILDCARD_FIRST: &str =
    "has a wildcard before a number; only trailing parts can be wildcards, as in 1.x or 1.2.x";
const TOO_LARGE: &str = "has a number too large (the limit is 2^53-1, as in npm)";
const BOUND_TOO_LARGE: &str = "has a number too large for the bound it implies \
     (the number + 1 is over 2^53-1, npm's limit)";
const DANGLING_HYPHEN: &str =
    "ends its version in `-` with nothing after it; write 1.2.3-beta or 1.2.3";
const DANGLING_PLUS: &str = "has a `+` with no build metadata after it; write 1.2.3+build or 1.2.3";
const PRERELEASE_WITHOUT_PATCH: &str =
    "has a prerelease but no full major.minor.patch; write 1.2.3-beta";
const MALFORMED_PRERELEASE: &str = "has a malformed prerelease (use dot-separated [0-9A-Za-z-] \
     parts, numbers without leading zeros)";
const BAD_PREFIX: &str = "has a prefix npm does not accept before a full version; \
     write 1.2.3, v1.2.3 or =1.2.3 (not v=, == or vv)";
const VERSION_TOO_LONG: &str = "has a version longer than 256 characters, npm's limit";
const NOT_A_COMPARATOR: &str =
    "is not a comparator npm accepts, such as 1.2.3, >=1.2.0, ~1.2, ^1.2 or 1.x";

/// A malformed range; the message names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {reason}", crate::quote(part))]
pub struct RangeError {
    /// The offending part of the range.
    pub part: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn err(part: &str, reason: &'static str) -> RangeError {
    RangeError {
        part: part.trim().to_string(),
        reason,
    }
}

/// A parsed node-semver range.
#[derive(Clone, Debug)]
pub struct Range {
    source: String,
    /// Alternatives joined by `||`; an empty set matches every release.
    sets: Vec<Vec<Comparator>>,
}

impl PartialEq for Range {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Range {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug)]
struct Comparator {
    op: Op,
    version: Version,
}

impl Comparator {
    fn holds(&self, v: &Version) -> bool {
        let ord = cmp_precedence(v, &self.version);
        match self.op {
            Op::Eq => ord == Ordering::Equal,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
        }
    }
}

/// Semver precedence: build metadata does not count.
fn cmp_precedence(a: &Version, b: &Version) -> Ordering {
    (a.major, a.minor, a.patch)
        .cmp(&(b.major, b.minor, b.patch))
        .then_with(|| a.pre.cmp(&b.pre))
}

impl Range {
    /// True when `version` satisfies the range, by npm's rules.
    pub fn matches(&self, version: &Version) -> bool {
        self.sets.iter().any(|set| {
            set.iter().all(|c| c.holds(version))
                && (version.pre.is_empty()
                    || set.iter().any(|c| {
                        !c.version.pre.is_empty()
                            && (c.version.major, c.version.minor, c.version.patch)
                                == (version.major, version.minor, version.patch)
                    }))
        })
    }

    /// The range as it was written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Range {
    type Err = RangeError;

    /// Parses a range as npm's `new Range(s)` does; an empty range is `*`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_RANGE_LEN {
            let mut end = 32;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            return Err(err(&format!("{}...", &s[..end]), TOO_LONG));
        }
        Ok(Range {
            source: s.trim().to_string(),
            sets: parse(s)?,
        })
    }
}

/// The alternatives of a range of any length (the caller caps it).
fn parse(s: &str) -> Result<Vec<Vec<Comparator>>, RangeError> {
    let raw = collapse_whitespace(s)?;
    let mut sets = Vec::new();
    for alt in raw.split("||") {
        sets.push(alternative(alt.trim_matches(' '))?);
    }
    // npm: if any alternative is `*`, the range is just `*`.
    if sets.iter().any(Vec::is_empty) {
        sets = vec![Vec::new()];
    }
    Ok(sets)
}

/// JavaScript's `\s`, which npm trims and collapses: Unicode's White_Space
/// but U+0085, and U+FEFF.
fn is_js_space(c: char) -> bool {
    (c.is_whitespace() && c != '\u{85}') || c == '\u{feff}'
}

/// npm's `range.trim().replace(/\s+/g, ' ')`. Any other character outside
/// ASCII could never be part of a valid range, so it is refused here and
/// every later step works on ASCII.
fn collapse_whitespace(s: &str) -> Result<String, RangeError> {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if is_js_space(c) {
            space = !out.is_empty();
        } else if !c.is_ascii() {
            return Err(err(&c.to_string(), NOT_ASCII));
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    Ok(out)
}

/// One `||` alternative, lowered to comparators; empty means `*`.
fn alternative(alt: &str) -> Result<Vec<Comparator>, RangeError> {
    let text = strip_builds(alt);
    let (text, hyphen) = match hyphen_range(&text).map_err(|reason| err(alt, reason))? {
        Some(replaced) => (replaced, true),
        None => (text, false),
    };
    let text = trim_comparator_whitespace(&text);
    let text = trim_after(&text, "~>", '~');
    let text = trim_after(&text, "^", '^');
    let mut set = Vec::new();
    for word in text.split(' ') {
        let lowered = desugar(word).map_err(|reason| err(word, reason))?;
        for piece in lowered.split(' ') {
            let comparator = comparator(piece).map_err(|reason| match reason {
                NOT_A_COMPARATOR | MALFORMED_PRERELEASE if hyphen => err(alt, HYPHEN_SIDE),
                NOT_A_COMPARATOR => err(word, diagnose(word)),
                reason if hyphen => err(alt, reason),
                reason => err(word, reason),
            })?;
            set.extend(comparator);
        }
    }
    Ok(set)
}

fn is_ident(b: Option<u8>) -> bool {
    b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn is_digit(b: Option<u8>) -> bool {
    b.is_some_and(|b| b.is_ascii_digit())
}

/// npm strips every `+build.metadata` before reading a range.
fn strip_builds(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let (mut copy_from, mut i) = (0, 0);
    while i < b.len() {
        if b[i] == b'+' {
            let end = build_end(b, i, usize::MAX);
            if end > i {
                out.push_str(&s[copy_from..i]);
                copy_from = end;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[copy_from..]);
    out
}

/// The end of `+id(.id)*` at `start`, each id at most `limit` long, or
/// `start` when there is none.
fn build_end(b: &[u8], start: usize, limit: usize) -> usize {
    if b.get(start) != Some(&b'+') {
        return start;
    }
    let ident_end = |from: usize| {
        let mut end = from;
        while end - from < limit && is_ident(b.get(end).copied()) {
            end += 1;
        }
        end
    };
    let mut end = ident_end(start + 1);
    if end == start + 1 {
        return start;
    }
    while b.get(end) == Some(&b'.') {
        let next = ident_end(end + 1);
        if next == end + 1 {
            break;
        }
        end = next;
    }
    end
}

/// One part of an x-range: a number (as written) or a wildcard; a part left
/// out counts as a wildcard, as in npm.
#[derive(Clone, Copy, Debug)]
enum Part<'a> {
    X,
    Num(&'a str),
}

impl Part<'_> {
    fn is_x(self) -> bool {
        matches!(self, Part::X)
    }
}

/// A part as npm writes it into a bound: as written, or `0` for a wildcard.
impl fmt::Display for Part<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::X => f.write_str("0"),
            Part::Num(n) => f.write_str(n),
        }
    }
}

/// A number npm accepts in a version: at most 2^53-1.
fn safe_number(n: &str) -> Option<u64> {
    n.parse::<u64>().ok().filter(|n| *n <= MAX_SAFE_INTEGER)
}

/// The number after this part (a wildcard counts as 0), or an error if it
/// passes npm's limit.
fn succ(part: Part<'_>) -> Result<u64, &'static str> {
    match part {
        Part::X => Ok(1),
        Part::Num(n) => match safe_number(n).ok_or(TOO_LARGE)? {
            MAX_SAFE_INTEGER => Err(BOUND_TOO_LARGE),
            n => Ok(n + 1),
        },
    }
}

/// npm's XRANGEPLAIN: `[v=\s]*` then 1-3 parts, then (after three parts) a
/// prerelease and build metadata.
#[derive(Debug)]
struct XRange<'a> {
    major: Part<'a>,
    minor: Part<'a>,
    patch: Part<'a>,
    pre: Option<&'a str>,
}

impl XRange<'_> {
    /// `x.1`, `1.x.3`: npm leaves such a word as it is, which then fails.
    fn wildcard_before_number(&self) -> bool {
        (self.major.is_x() && !self.minor.is_x()) || (self.minor.is_x() && !self.patch.is_x())
    }

    fn pre_suffix(&self) -> String {
        self.pre.map(|p| format!("-{p}")).unwrap_or_default()
    }
}

/// A number as npm's range regexes read it, `0|[1-9]\d{0,256}`, or a wildcard.
fn xrange_part(p: &str) -> Option<Part<'_>> {
    match p.as_bytes() {
        b"x" | b"X" | b"*" => Some(Part::X),
        b"0" => Some(Part::Num(p)),
        [b'1'..=b'9', rest @ ..]
            if rest.len() < MAX_NUMBER_DIGITS && rest.iter().all(u8::is_ascii_digit) =>
        {
            Some(Part::Num(p))
        }
        _ => None,
    }
}

/// A prerelease as npm's regexes read it: dot-separated identifiers, each
/// a number without leading zeros or `\d{0,256}[a-zA-Z-][a-zA-Z0-9-]{0,250}`.
fn prerelease_ok(pre: &str) -> bool {
    pre.split('.').all(|id| {
        let b = id.as_bytes();
        if b.is_empty() || !b.iter().all(|&c| is_ident(Some(c))) {
            return false;
        }
        match b.iter().position(|c| !c.is_ascii_digit()) {
            None => (b == b"0" || b[0] != b'0') && b.len() <= MAX_NUMBER_DIGITS,
            Some(digits) => {
                digits <= MAX_VERSION_LEN && b.len() - digits - 1 <= MAX_IDENTIFIER_TAIL
            }
        }
    })
}

/// `+build.metadata`, the `+` included, as npm's regexes read it.
fn build_ok(build: &str) -> bool {
    !build.is_empty() && build_end(build.as_bytes(), 0, MAX_IDENTIFIER_TAIL) == build.len()
}

/// The whole of `text` as npm's XRANGEPLAIN, or `None`.
fn xrange_plain(text: &str) -> Option<XRange<'_>> {
    let body = text.trim_start_matches(['v', '=', ' ']);
    let core_end = body.find(['-', '+']).unwrap_or(body.len());
    let mut parts = [Part::X; 3];
    let mut n = 0;
    for p in body[..core_end].split('.') {
        *parts.get_mut(n)? = xrange_part(p)?;
        n += 1;
    }
    let mut rest = &body[core_end..];
    let mut pre = None;
    if let Some(r) = rest.strip_prefix('-') {
        let end = r.find('+').unwrap_or(r.len());
        if n < 3 || !prerelease_ok(&r[..end]) {
            return None;
        }
        pre = Some(&r[..end]);
        rest = &r[end..];
    }
    if !rest.is_empty() && (n < 3 || !build_ok(rest)) {
        return None;
    }
    let [major, minor, patch] = parts;
    Some(XRange {
        major,
        minor,
        patch,
        pre,
    })
}

/// npm's HYPHENRANGE, `^\s*(XRANGEPLAIN)\s+-\s+(XRANGEPLAIN)\s*$` on the
/// collapsed alternative, rewritten to `>=from <=to` as npm's
/// `hyphenReplace` writes it; `None` when it is not a hyphen range.
fn hyphen_range(alt: &str) -> Result<Option<String>, &'static str> {
    // An x-range with its `[v=\s]*` prefix, from `start` to the next space.
    let side = |start: usize| {
        let body =
            start + alt[start..].len() - alt[start..].trim_start_matches(['v', '=', ' ']).len();
        let end = alt[body..].find(' ').map_or(alt.len(), |i| body + i);
        xrange_plain(&alt[start..end]).map(|x| (x, end))
    };
    let start = usize::from(alt.starts_with(' '));
    let Some((from, from_end)) = side(start) else {
        return Ok(None);
    };
    if !alt[from_end..].starts_with(" - ") {
        return Ok(None);
    }
    let Some((to, to_end)) = side(from_end + 3) else {
        return Ok(None);
    };
    if !matches!(&alt[to_end..], "" | " ") {
        return Ok(None);
    }
    let (from_text, to_text) = (&alt[start..from_end], &alt[from_end + 3..to_end]);
    let low = match (from.major, from.minor, from.patch) {
        (Part::X, _, _) => String::new(),
        (m, Part::X, _) => format!(">={m}.0.0"),
        (m, n, Part::X) => format!(">={m}.{n}.0"),
        _ => format!(">={from_text}"),
    };
    let high = match (to.major, to.minor, to.patch) {
        (Part::X, _, _) => String::new(),
        (m, Part::X, _) => format!("<{}.0.0-0", succ(m)?),
        (m, n, Part::X) => format!("<{m}.{}.0-0", succ(n)?),
        (m, n, p) if to.pre.is_some() => format!("<={m}.{n}.{p}{}", to.pre_suffix()),
        _ => format!("<={to_text}"),
    };
    Ok(Some(format!("{low} {high}").trim_matches(' ').to_string()))
}

/// npm's `trimComparatorWhitespace` (internal/trim-comparator-whitespace.js):
/// drops the space between an operator and its version (`> 1.2.3`), with the
/// exact boundaries of the regex replacement it stands for. `s` is ASCII
/// with single spaces.
fn trim_comparator_whitespace(s: &str) -> String {
    let b = s.as_bytes();
    let scan = Scan::new(b);
    let is_prefix = |i: usize| matches!(b.get(i), Some(b'v' | b'=' | b' '));
    let is_version_start = |i: usize| matches!(b.get(i), Some(b'0'..=b'9' | b'x' | b'X' | b'*'));
    let mut out = String::with_capacity(s.len());
    let (mut copy_from, mut cursor) = (0, 0);
    while cursor < b.len() {
        let match_start = cursor;
        if matches!(b[cursor], b'<' | b'>') {
            cursor += 1;
        } else if !is_prefix(cursor) && !is_version_start(cursor) {
            cursor += 1;
            continue;
        }
        while cursor < b.len() && is_prefix(cursor) {
            cursor += 1;
        }
        if !is_version_start(cursor) {
            continue;
        }
        // The space to remove: after an optional space, `<`/`>` and `=`.
        let mut at = match_start;
        if b[at] == b' ' {
            at += 1;
        }
        if matches!(b.get(at), Some(b'<' | b'>')) {
            at += 1;
        }
        if b.get(at) == Some(&b'=') {
            at += 1;
        }
        if b.get(at) == Some(&b' ') {
            out.push_str(&s[copy_from..at]);
            copy_from = at + 1;
        }
        cursor = scan.version_end(cursor);
    }
    out.push_str(&s[copy_from..]);
    out
}

/// The scanners of npm's `trimComparatorWhitespace`, over bytes; each
/// returns the end of what it matched, or its start when nothing matched.
struct Scan<'a> {
    b: &'a [u8],
    /// For each digit, where its run of digits ends (so runs are read once).
    run_end: Vec<usize>,
}

impl<'a> Scan<'a> {
    fn new(b: &'a [u8]) -> Self {
        let mut run_end = vec![0; b.len()];
        for i in (0..b.len()).rev() {
            run_end[i] = match b.get(i + 1) {
                Some(c) if c.is_ascii_digit() => run_end[i + 1],
                _ => i + 1,
            };
        }
        Scan { b, run_end }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.b.get(i).copied()
    }

    fn digits_end(&self, start: usize, limit: usize) -> usize {
        if !is_digit(self.at(start)) {
            return start;
        }
        (start + limit).min(self.run_end[start])
    }

    fn number_end(&self, start: usize, loose: bool) -> usize {
        if !loose && self.at(start) == Some(b'0') {
            return start + 1;
        }
        let limit = if loose {
            MAX_VERSION_LEN
        } else {
            MAX_NUMBER_DIGITS
        };
        self.digits_end(start, limit)
    }

    fn prerelease_id_end(&self, start: usize, loose: bool) -> usize {
        let digits = self.digits_end(start, MAX_VERSION_LEN);
        if self
            .at(digits)
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'-')
        {
            let mut end = digits + 1;
            let limit = end + MAX_IDENTIFIER_TAIL;
            while end < limit && is_ident(self.at(end)) {
                end += 1;
            }
            return end;
        }
        self.number_end(start, loose)
    }

    fn prerelease_end(&self, start: usize, loose: bool) -> usize {
        let hyphen = self.at(start) == Some(b'-');
        if !loose && !hyphen {
            return start;
        }
        let id_start = start + usize::from(hyphen);
        let mut end = self.prerelease_id_end(id_start, loose);
        if end == id_start {
            if !loose || !hyphen {
                return start;
            }
            end = self.prerelease_id_end(start, loose);
        }
        while self.at(end) == Some(b'.') {
            let next = self.prerelease_id_end(end + 1, loose);
            if next == end + 1 {
                break;
            }
            end = next;
        }
        end
    }

    fn loose_full_end(&self, start: usize) -> usize {
        let mut end = start;
        for part in 0..3 {
            let next = self.number_end(end, true);
            if next == end {
                return start;
            }
            end = next;
            if part < 2 {
                if self.at(end) != Some(b'.') {
                    return start;
                }
                end += 1;
            }
        }
        build_end(self.b, self.prerelease_end(end, true), MAX_IDENTIFIER_TAIL)
    }

    fn partial_part_end(&self, start: usize) -> usize {
        match self.at(start) {
            Some(b'0'..=b'9') => self.number_end(start, false),
            Some(b'x' | b'X' | b'*') => start + 1,
            _ => start,
        }
    }

    fn partial_end(&self, start: usize) -> usize {
        let mut end = self.partial_part_end(start);
        for _ in 0..2 {
            if self.at(end) != Some(b'.') {
                return end;
            }
            let next = self.partial_part_end(end + 1);
            if next == end + 1 {
                return end;
            }
            end = next;
        }
        build_end(self.b, self.prerelease_end(end, false), MAX_IDENTIFIER_TAIL)
    }

    fn version_end(&self, start: usize) -> usize {
        match self.loose_full_end(start) {
            end if end != start => end,
            _ => self.partial_end(start),
        }
    }
}

/// npm's TILDETRIM and CARETTRIM: `~ 1.2` is `~1.2` (and `~> 1.2` is too),
/// `^ 1.2` is `^1.2`. `op` is the operator with its optional second byte.
fn trim_after(s: &str, op: &str, lone: char) -> String {
    let b = s.as_bytes();
    let op = op.as_bytes();
    let mut out = String::with_capacity(s.len());
    let (mut copy_from, mut i) = (0, 0);
    while i < b.len() {
        if b[i] == op[0] {
            let mut j = i + 1;
            if op.len() > 1 && b.get(j) == Some(&op[1]) && b.get(j + 1) == Some(&b' ') {
                j += 1;
            }
            if b.get(j) == Some(&b' ') {
                out.push_str(&s[copy_from..i]);
                out.push(lone);
                copy_from = j + 1;
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[copy_from..]);
    out
}

/// One word, desugared as npm's `parseComparator` does it: a caret, else a
/// tilde, else an x-range, then the first `*` (with its operator) removed.
/// The result is comparators joined by a space (or nothing, for `*`).
fn desugar(word: &str) -> Result<Cow<'_, str>, &'static str> {
    if let Some(x) = word.strip_prefix('^').and_then(xrange_plain) {
        return caret(&x).map(Cow::Owned);
    }
    if let Some(x) = word
        .strip_prefix('~')
        .map(|r| r.strip_prefix('>').unwrap_or(r))
        .and_then(xrange_plain)
    {
        return tilde(&x).map(Cow::Owned);
    }
    let op_len = match word.as_bytes() {
        [b'<' | b'>', b'=', ..] => 2,
        [b'<' | b'>' | b'=', ..] => 1,
        _ => 0,
    };
    let (op, rest) = word.split_at(op_len);
    if let Some(x) = xrange_plain(rest)
        && let Some(lowered) = x_range(op, &x)?
    {
        return Ok(strip_star(Cow::Owned(lowered)));
    }
    Ok(strip_star(Cow::Borrowed(word)))
}

/// npm's `replaceCaret`: changes that keep the left-most non-zero part.
fn caret(x: &XRange<'_>) -> Result<String, &'static str> {
    let pre = x.pre_suffix();
    Ok(match (x.major, x.minor, x.patch) {
        (Part::X, _, _) => String::new(),
        (m, Part::X, _) => format!(">={m}.0.0 <{}.0.0-0", succ(m)?),
        (m @ Part::Num("0"), n, Part::X) => format!(">={m}.{n}.0 <0.{}.0-0", succ(n)?),
        (m, n, Part::X) => format!(">={m}.{n}.0 <{}.0.0-0", succ(m)?),
        (Part::Num("0"), Part::Num("0"), p) => format!(">=0.0.{p}{pre} <0.0.{}-0", succ(p)?),
        (Part::Num("0"), n, p) => format!(">=0.{n}.{p}{pre} <0.{}.0-0", succ(n)?),
        (m, n, p) => format!(">={m}.{n}.{p}{pre} <{}.0.0-0", succ(m)?),
    })
}

/// npm's `replaceTilde`: patch-level changes (minor-level for `~1`).
fn tilde(x: &XRange<'_>) -> Result<String, &'static str> {
    Ok(match (x.major, x.minor, x.patch) {
        (Part::X, _, _) => String::new(),
        (m, Part::X, _) => format!(">={m}.0.0 <{}.0.0-0", succ(m)?),
        (m, n, Part::X) => format!(">={m}.{n}.0 <{m}.{}.0-0", succ(n)?),
        (m, n, p) => format!(">={m}.{n}.{p}{} <{m}.{}.0-0", x.pre_suffix(), succ(n)?),
    })
}

/// npm's `replaceXRange` for a word that is an operator and an x-range;
/// `None` where npm leaves the word as it is (no wildcard, or a wildcard
/// before a number). A prerelease after a wildcard is dropped, as in npm.
fn x_range(op: &str, x: &XRange<'_>) -> Result<Option<String>, &'static str> {
    if x.wildcard_before_number() || !x.patch.is_x() {
        return Ok(None);
    }
    let op = if op == "=" { "" } else { op };
    let whole_major = x.minor.is_x();
    Ok(Some(match (op, x.major) {
        ("<" | ">", Part::X) => "<0.0.0-0".to_string(),
        (_, Part::X) => "*".to_string(),
        (">", m) if whole_major => format!(">={}.0.0", succ(m)?),
        (">", m) => format!(">={m}.{}.0", succ(x.minor)?),
        ("<=", m) if whole_major => format!("<{}.0.0-0", succ(m)?),
        ("<=", m) => format!("<{m}.{}.0-0", succ(x.minor)?),
        ("<", m) => format!("<{m}.{}.0-0", x.minor),
        (">=", m) => format!(">={m}.{}.0", x.minor),
        (_, m) if whole_major => format!(">={m}.0.0 <{}.0.0-0", succ(m)?),
        (_, m) => format!(">={m}.{}.0 <{m}.{}.0-0", x.minor, succ(x.minor)?),
    }))
}

/// npm's `replaceStars`: the first `*`, with an operator right before it,
/// is removed (`>=*` is `*`, and so, oddly, is the star of `1.2.3*`).
fn strip_star(text: Cow<'_, str>) -> Cow<'_, str> {
    let Some(star) = text.find('*') else {
        return text;
    };
    let b = text.as_bytes();
    // `(<|>)?=?\s?\*`: the longest such text that ends at the star.
    let mut start = star;
    if start > 0 && b[start - 1] == b' ' {
        start -= 1;
    }
    if start > 0 && b[start - 1] == b'=' {
        start -= 1;
    }
    if start > 0 && matches!(b[start - 1], b'<' | b'>') {
        start -= 1;
    }
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..start]);
    out.push_str(&text[star + 1..]);
    Cow::Owned(out)
}

/// One desugared comparator as npm's `Comparator` reads it:
/// `^((?:<|>)?=?)(v?M.m.p(-pre)?(+build)?)$`, or empty, which matches
/// every release, as does `>=0.0.0`. `None` for those two.
fn comparator(piece: &str) -> Result<Option<Comparator>, &'static str> {
    if piece.is_empty() || piece == ">=0.0.0" {
        return Ok(None);
    }
    let op_len = match piece.as_bytes() {
        [b'<' | b'>', b'=', ..] => 2,
        [b'<' | b'>' | b'=', ..] => 1,
        _ => 0,
    };
    let (op, text) = piece.split_at(op_len);
    let op = match op {
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        _ => Op::Eq,
    };
    // FULLPLAIN: `v?` then three numbers (no wildcards), prerelease, build.
    let body = text.strip_prefix('v').unwrap_or(text);
    if !body.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(NOT_A_COMPARATOR);
    }
    let x = xrange_plain(body).ok_or(NOT_A_COMPARATOR)?;
    let number = |p: Part<'_>| match p {
        Part::Num(n) => safe_number(n).ok_or(TOO_LARGE),
        Part::X => Err(NOT_A_COMPARATOR),
    };
    let (major, minor, patch) = (number(x.major)?, number(x.minor)?, number(x.patch)?);
    if text.len() > MAX_VERSION_LEN {
        return Err(VERSION_TOO_LONG);
    }
    let pre = match x.pre {
        Some(p) => Prerelease::new(p).map_err(|_| MALFORMED_PRERELEASE)?,
        None => Prerelease::EMPTY,
    };
    Ok(Some(Comparator {
        op,
        version: Version {
            major,
            minor,
            patch,
            pre,
            build: BuildMetadata::EMPTY,
        },
    }))
}

/// Why npm rejects `word`, for the error message; the parse above decides
/// whether it does.
fn diagnose(word: &str) -> &'static str {
    if word.bytes().all(|c| b"<>=~^".contains(&c)) {
        return NEEDS_VERSION;
    }
    if word.starts_with('-') && word.bytes().all(|c| c == b'-') {
        return HYPHEN_SIDE_MISSING;
    }
    let ops = ["~>", "~", "^", ">=", "<=", ">", "<", "="];
    let (op, rest) = ops
        .iter()
        .find_map(|op| word.strip_prefix(op).map(|rest| (*op, rest)))
        .unwrap_or(("", word));
    if rest.starts_with(['<', '>', '~', '^']) {
        return TWO_OPERATORS;
    }
    let body = rest.trim_start_matches(['v', '=']);
    let prefix = &rest[..rest.len() - body.len()];
    if body.is_empty() {
        return NEEDS_VERSION;
    }
    if !body
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b".-+*".contains(&c))
    {
        return BAD_CHARACTER;
    }
    let core_end = body.find(['-', '+']).unwrap_or(body.len());
    let parts: Vec<&str> = body[..core_end].split('.').collect();
    if parts.len() > 3 {
        return TOO_MANY_PARTS;
    }
    if parts.iter().any(|p| p.is_empty()) {
        return EMPTY_PART;
    }
    let Some(parts) = parts
        .iter()
        .map(|p| xrange_part(p))
        .collect::<Option<Vec<_>>>()
    else {
        return NOT_A_VERSION;
    };
    if parts.windows(2).any(|w| w[0].is_x() && !w[1].is_x()) {
        return WILDCARD_FIRST;
    }
    if parts
        .iter()
        .any(|p| matches!(p, Part::Num(n) if safe_number(n).is_none()))
    {
        return TOO_LARGE;
    }
    let suffix = &body[core_end..];
    let (pre, build) = match suffix.strip_prefix('-') {
        Some(r) => {
            let end = r.find('+').unwrap_or(r.len());
            (Some(&r[..end]), &r[end..])
        }
        None => (None, suffix),
    };
    if pre == Some("") {
        return DANGLING_HYPHEN;
    }
    if pre.is_some() && parts.len() < 3 {
        return PRERELEASE_WITHOUT_PATCH;
    }
    if pre.is_some_and(|p| !prerelease_ok(p)) {
        return MALFORMED_PRERELEASE;
    }
    if build.starts_with('+') {
        return DANGLING_PLUS;
    }
    let full = parts.len() == 3 && parts.iter().all(|p| !p.is_x());
    if full && !matches!(op, "~>" | "~" | "^") && !matches!(prefix, "" | "v") {
        return BAD_PREFIX;
    }
    NOT_A_COMPARATOR
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sat(range: &str, version: &str) -> bool {
        range
            .parse::<Range>()
            .unwrap()
            .matches(&Version::parse(version).unwrap())
    }

    #[test]
    fn bare_version_is_exact_unlike_the_semver_crate() {
        assert!(sat("1.2.3", "1.2.3"));
        assert!(!sat("1.2.3", "1.2.4"));
        assert!(!sat("1.2.3", "1.3.0"));
    }

    #[test]
    fn comparators_joined_by_space_are_anded() {
        assert!(!sat(">=1.2.3 <1.2.3", "1.2.3"));
        assert!(!sat(">=1.2.3 <1.2.3", "5.0.0"));
        assert!(sat(">=1.0.0 <2.0.0", "1.9.9"));
    }

    #[test]
    fn alternatives_hyphens_and_wildcards() {
        assert!(sat("1.x || >=2.5.0", "2.6.0"));
        assert!(!sat("1.x || >=2.5.0", "2.4.0"));
        assert!(sat("1.2.3 - 2.3.4", "2.3.4"));
        assert!(!sat("1.2.3 - 2.3", "2.4.0"));
        assert!(sat("1.2.3 - 2.3", "2.3.9"));
        assert!(sat("*", "0.0.1"));
        assert!(sat("1.2.* || ", "9.9.9"), "an empty side of || is *");
    }

    #[test]
    fn prereleases_match_only_when_named_for_the_same_patch() {
        assert!(!sat("*", "1.2.3-beta"));
        assert!(sat(">1.2.3-alpha.3", "1.2.3-alpha.7"));
        assert!(!sat(">1.2.3-alpha.3", "3.4.5-alpha.9"));
        assert!(sat(">1.2.3-alpha.3", "3.4.5"));
        assert!(sat("^1.2.3-beta.2", "1.2.3-beta.4"));
        assert!(!sat("^1.2.3-beta.2", "1.2.4-beta.4"));
    }

    #[test]
    fn the_classes_npm_reads_differently_from_a_plain_grammar() {
        // An empty or blank range is `*`.
        assert!(sat("", "1.0.0"));
        assert!(sat(" \u{a0}", "0.0.1"));
        assert!(!sat("", "1.0.0-beta"));
        // A prerelease after a wildcard is dropped.
        assert!(sat("1.2.x-beta", "1.2.9"));
        assert!(!sat("1.2.x-beta", "1.2.3-beta"));
        // An alternative that is `*` makes the whole range `*`.
        assert!(!sat("* || 1.2.3-beta", "1.2.3-beta"));
        assert!(!sat(">=0.0.0 || 1.2.3-beta", "1.2.3-beta"));
        assert!(sat("1.0.0 || 1.2.3-beta", "1.2.3-beta"));
        // Loose spellings npm rejects.
        for bad in [
            "v=1.2.3",
            "1.2.3-",
            "1.2.3+",
            "x.1.2",
            "1.*.3",
            "1.2.3 -",
            "- 1.2.3",
            "=1.2.3 - 2",
            "^9007199254740991",
        ] {
            assert!(bad.parse::<Range>().is_err(), "{bad:?} is accepted");
        }
        // And loose spellings it accepts.
        assert!(sat("v=1.2.x", "1.2.5"));
        assert!(sat("=v1.2.3", "1.2.3"));
        assert!(sat("1.2.3 - v 2", "2.9.0"));
        assert!(sat("1.2.3*", "1.2.3"));
        assert!(sat("1.2.3 - x.1.2", "5.0.0"));
    }

    #[test]
    fn errors_name_the_bad_part() {
        let msg = |r: &str| r.parse::<Range>().unwrap_err().to_string();
        assert_eq!(
            msg("1.2.3.4"),
            "\"1.2.3.4\" has more than three version parts"
        );
        assert_eq!(msg(">= "), "\">=\" needs a version after it");
        assert!(msg("01.2.3").contains("without leading zeros"));
        assert!(msg("web").contains("is not a version"));
        assert!(msg("18446744073709551615.x").contains("has a number too large"));
        assert!(msg("^9007199254740991").contains("has a number too large"));
        assert!(
            "^9007199254740990".parse::<Range>().is_ok(),
            "the largest number whose bound fits parses"
        );
        assert!(msg(">>1").contains("has two operators"));
        assert!(msg("v=1.2.3").contains("has a prefix npm does not accept"));
        assert!(msg("1.2.3-").contains("ends its version in `-`"));
        assert!(msg("1.2.3+").contains("has a `+` with no build metadata"));
        assert!(msg("x.1.2").contains("has a wildcard before a number"));
        assert!(msg("1.*.3").contains("has a wildcard before a number"));
        assert!(msg("1.2.3 -").contains("is a hyphen with a side missing"));
        assert!(msg("1.x-beta").contains("has a prerelease but no full"));
        assert!(msg("1.2.3 é").contains("is not a character a range can have"));
        assert!(msg(&"1".repeat(MAX_RANGE_LEN + 1)).contains("at most 1024 bytes"));
    }

    #[test]
    fn parsing_is_linear_in_the_length_of_the_range() {
        // Inputs that make naive splitting or regex backtracking quadratic,
        // at 64 times the length limit (which `parse` does not check): each
        // takes some milliseconds, where quadratic work would take minutes.
        let n = 64 * MAX_RANGE_LEN;
        let inputs = [
            "1".repeat(n),
            "1.".repeat(n / 2),
            "1.2.3 - ".repeat(n / 8),
            " - ".repeat(n / 3),
            "||".repeat(n / 2),
            "> ".repeat(n / 2),
            "~ ".repeat(n / 2),
            "v".repeat(n) + "1",
            format!("1.2.3-{}", "a.".repeat(n / 2)),
            format!("1.2.3+{}", "a.".repeat(n / 2)),
            format!("1.2.3-{}", "1".repeat(n)),
            "*".repeat(n),
            "+a".repeat(n / 2),
            "1.2.3 ".repeat(n / 6),
            "^1.2.x-beta ".repeat(n / 12),
        ];
        let start = std::time::Instant::now();
        for input in &inputs {
            let _ = parse(input);
        }
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    }

    /// Every row of `tests/data/semver-ranges.tsv` (npm's own answers, from
    /// `scripts/semver-table`) against the matcher directly. With
    /// SEAPORT_SEMVER_TABLE set, the table at that path instead (a bigger
    /// one from `gen.mjs --ranges N --versions all`, say).
    #[test]
    fn agrees_with_npm_semver_on_every_row_of_the_table() {
        const TABLE: &str = include_str!("../tests/data/semver-ranges.tsv");
        let other = std::env::var_os("SEAPORT_SEMVER_TABLE")
            .map(|path| std::fs::read_to_string(path).expect("SEAPORT_SEMVER_TABLE is readable"));
        let (mut rows, mut ranges) = (0, 0);
        let mut wrong = Vec::new();
        let mut current: Option<(&str, Result<Range, RangeError>)> = None;
        for line in other.as_deref().unwrap_or(TABLE).lines() {
            if line.starts_with('#') {
                continue;
            }
            let [range, version, expected] = line.split('\t').collect::<Vec<_>>()[..] else {
                panic!("malformed line {line:?}");
            };
            rows += 1;
            if current.as_ref().is_none_or(|(r, _)| *r != range) {
                ranges += 1;
                current = Some((range, range.parse()));
            }
            let parsed = &current.as_ref().unwrap().1;
            match (expected, parsed) {
                ("invalid", Ok(_)) => {
                    wrong.push(format!("{range:?}: npm rejects it, we accept it"))
                }
                ("invalid", Err(_)) => {}
                (_, Err(e)) => wrong.push(format!("{range:?}: npm accepts it, we say {e}")),
                (expected, Ok(r)) => {
                    let v = Version::parse(version).unwrap();
                    if r.matches(&v).to_string() != expected {
                        wrong.push(format!("{range:?} vs {version}: npm says {expected}"));
                    }
                }
            }
        }
        assert!(
            other.is_some() || (ranges >= 5000 && rows >= 40_000),
            "{ranges} ranges, {rows} rows"
        );
        assert!(
            wrong.is_empty(),
            "{} of {rows} rows disagree with npm; the first:\n{}",
            wrong.len(),
            wrong
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
