//! Parsing the configuration text, with errors a user can act on.
//!
//! ron's own errors give a line and column but speak of the schema's Rust types: `Integer is out
//! of bounds` (which key? which range?), ``Unexpected field named `x` in `HeartbeatConfig` ``, ``enum
//! `ComputeDtype` ``, `Expected option` for a path written without `Some(...)`, and for
//! `init_scale: 65536.0` the advice to write a raw identifier `r#65536.0`, which is wrong. So the
//! text is parsed through `serde_path_to_error`, which records the key path the error happened at
//! (`heartbeat.ping_interval_ms`) with any serde deserializer, while ron's `Deserializer` still gives
//! the position (its `span_error`, as `ron::from_str` does). The message then names the key and
//! section as the file spells them, the value as written, and the fix: the range of an integer,
//! `Some(...)` or `None` for an option, `Fixed(...)` or `Auto` for a loss scale, the variants of an
//! enum, the closest known key for a typo.

use super::{Config, ConfigError, reference};
use ron::error::{Error as RonError, Position, SpannedError};
use serde_path_to_error::{Path, Segment};

/// The schema's struct names as ron's errors spell them, and what the file calls them.
const SECTION_STRUCTS: [(&str, &str); 8] = [
    ("StreamConfig", "section `stream`"),
    ("ReconnectConfig", "section `reconnect`"),
    ("HeartbeatConfig", "section `heartbeat`"),
    ("TlsConfig", "section `tls`"),
    ("RestConfig", "section `rest`"),
    ("ScalerConfig", "section `scaler`"),
    ("TrainConfig", "section `train`"),
    ("Config", "the top level"),
];

/// The schema's enum names as ron's errors spell them, and the keys that take them.
const ENUMS: [(&str, &str); 4] = [
    ("ComputeDtype", "train.dtype"),
    ("Features", "train.features"),
    ("ScaleChoice", "a loss scale (Auto or Fixed(x))"),
    ("TlsVersion", "tls.min_version"),
];

/// Keys of type `ScaleChoice`: ron reads `65536.0` there as a bad identifier, so the fix
/// (`Fixed(65536.0)`) must come from here. A test checks this list against the schema's defaults.
pub(super) const SCALE_KEYS: [&str; 2] = ["scaler.init_scale", "scaler.reset_scale"];

/// Parses `text` as a [`Config`] (without validating it).
pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    // Notepad and some other Windows editors save UTF-8 with a byte-order mark; ron takes it for
    // a stray character and reports a missing `(`. Editors do not show it or count it as a column,
    // so it is dropped before anything counts positions.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if is_blank(text) {
        return Err(ConfigError::Empty);
    }
    let mut de = ron::Deserializer::from_str(text).map_err(|e| explain(text, None, e))?;
    let parsed: Result<Config, _> = serde_path_to_error::deserialize(&mut de);
    match parsed {
        Ok(cfg) => {
            de.end().map_err(|e| explain(text, None, de.span_error(e)))?;
            Ok(cfg)
        }
        Err(e) => {
            let path = e.path().clone();
            let spanned = de.span_error(e.into_inner());
            Err(explain(text, Some(&path), spanned))
        }
    }
}

/// Whether `text` holds nothing but whitespace and comments (`//` to the end of the line, and
/// `/* */`, which RON lets nest).
fn is_blank(text: &str) -> bool {
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.split_once('\n').map_or("", |(_, next)| next);
        } else if rest.starts_with("/*") {
            let mut depth = 0usize;
            let mut end = None;
            let bytes = rest.as_bytes();
            let mut i = 0;
            while i + 1 < bytes.len() {
                match &bytes[i..i + 2] {
                    b"/*" => {
                        depth += 1;
                        i += 2;
                    }
                    b"*/" => {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            end = Some(i);
                            break;
                        }
                    }
                    _ => i += 1,
                }
            }
            // An unclosed comment is a syntax error, for the parser to report.
            let Some(end) = end else { return false };
            rest = &rest[end..];
        } else {
            return false;
        }
        rest = rest.trim_start();
    }
    true
}

/// The key path as the file spells it: `heartbeat.ping_interval_ms`, `stream.streams[1]`; `None`
/// when the error is not inside a known key (a syntax error the path could not follow).
fn key_path(path: &Path) -> Option<String> {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            // `Fixed` inside `init_scale: Fixed(..)`: the key is what the user looks for.
            Segment::Enum { .. } => {}
            Segment::Unknown => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The value written at `pos` (ron's spans may start on the whitespace before it, or after a
/// sign) and where it starts; `None` at the end of the text.
fn value_at<'a>(text: &'a str, pos: &Position) -> Option<(&'a str, Position)> {
    let mut offset = byte_offset(text, pos)?;
    // A sign, or the opening quote of a string whose content ron points into.
    if let Some(c) = text[..offset].chars().next_back().filter(|c| matches!(c, '-' | '+' | '"')) {
        offset -= c.len_utf8();
    }
    let skipped = text[offset..].len() - text[offset..].trim_start().len();
    offset += skipped;
    let rest = &text[offset..];
    let len = if rest.starts_with('"') {
        let mut escaped = false;
        rest.char_indices()
            .skip(1)
            .find(|&(_, c)| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            })
            .map_or(rest.len(), |(i, _)| i + 1)
    } else {
        rest.find(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '+'))).unwrap_or(rest.len())
    };
    if len == 0 {
        return None;
    }
    Some((&rest[..len], position(text, offset)))
}

/// The byte offset of `pos` (1-based line and column in characters), or of the end of its line when
/// the column is past it; `None` past the last line.
fn byte_offset(text: &str, pos: &Position) -> Option<usize> {
    let line_start = text.split_inclusive('\n').take(pos.line.saturating_sub(1)).map(str::len).sum::<usize>();
    let line = text.get(line_start..)?;
    Some(line_start + line.char_indices().nth(pos.col.saturating_sub(1)).map_or(line.len(), |(i, _)| i))
}

/// The 1-based line and column of byte `offset`.
fn position(text: &str, offset: usize) -> Position {
    let before = &text[..offset];
    let line = 1 + before.matches('\n').count();
    let col = 1 + before.rsplit('\n').next().map_or(0, |l| l.chars().count());
    Position { line, col }
}

/// When ron stopped at the '.' of a number written to a whole-number key (`epochs: 1.5`): the key
/// as written before the number, the whole number as written, and where it starts.
fn fraction_after_whole<'a>(text: &'a str, pos: &Position) -> Option<(&'a str, &'a str, Position)> {
    let offset = byte_offset(text, pos)?;
    let after = &text[offset..];
    if !after.starts_with('.') {
        return None;
    }
    let before = &text[..offset];
    let whole_start = before.trim_end_matches(|c: char| c.is_ascii_digit() || c == '_').len();
    let whole_start = before[..whole_start].strip_suffix(['-', '+']).map_or(whole_start, str::len);
    if whole_start == offset {
        return None;
    }
    let end = offset + 1 + after[1..].find(|c: char| !(c.is_ascii_digit() || c == '_')).unwrap_or(after.len() - 1);
    let field = before[..whole_start].trim_end().strip_suffix(':')?.trim_end();
    let field_start = field.trim_end_matches(|c: char| c.is_ascii_alphanumeric() || c == '_').len();
    let field = &field[field_start..];
    if field.is_empty() {
        return None;
    }
    Some((field, &text[whole_start..end], position(text, whole_start)))
}

/// Edit distance (insertions, deletions, substitutions), for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The candidate `found` is most likely a typo of (case ignored; at most a third of it changed).
fn closest<'a>(found: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let found = found.to_lowercase();
    candidates
        .iter()
        .map(|c| (distance(&found, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn did_you_mean(found: &str, candidates: &[&str]) -> String {
    closest(found, candidates).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default()
}

/// ron's message with the schema's type names replaced by the file's words.
fn rename(message: &str) -> String {
    let mut out = message.to_string();
    for (name, file) in SECTION_STRUCTS.iter().chain(ENUMS.iter()) {
        out = out.replace(&format!("struct `{name}`"), file).replace(&format!("`{name}`"), file);
    }
    out
}

/// The largest value of the integer key `section.key`. ron's out-of-bounds error does not name the
/// type, so the schema is asked: a key that refuses 65536 is a u16, one that refuses 2^32 a u32.
fn integer_max(section: &str, key: &str) -> u64 {
    let refuses = |n: u64| {
        matches!(ron::from_str::<Config>(&format!("({section}: ({key}: {n}))")),
            Err(e) if e.code == RonError::IntegerOutOfBounds)
    };
    if refuses(1 << 16) {
        u16::MAX.into()
    } else if refuses(1 << 32) {
        u32::MAX.into()
    } else {
        u64::MAX
    }
}

/// The error for `spanned`, which happened at `path` (`None`: outside the value, e.g. trailing text).
fn explain(text: &str, path: Option<&Path>, spanned: SpannedError) -> ConfigError {
    let mut key = path.and_then(key_path);
    if let RonError::DuplicateStructField { field, .. } = &spanned.code {
        // The path ends at the section; the key set twice is the one to look for.
        key = Some(key.map_or_else(|| field.to_string(), |k| format!("{k}.{field}")));
    }
    let mut names: Vec<&str> = path
        .map(|p| {
            p.iter().filter_map(|s| if let Segment::Map { key } = s { Some(key.as_str()) } else { None }).collect()
        })
        .unwrap_or_default();
    // `epochs: 1.5` for a whole-number key: ron reads the 1, then wants a comma at the '.', with a
    // path that ends at the section; the key is the one written before the number.
    let fraction = match spanned.code {
        RonError::ExpectedComma => fraction_after_whole(text, &spanned.span.start),
        _ => None,
    };
    let found = match fraction {
        Some((field, number, at)) => {
            names.retain(|n| *n != field);
            names.push(field);
            key = Some(names.join("."));
            Some((number, at))
        }
        None => value_at(text, &spanned.span.start),
    };
    let (line, column) =
        found.as_ref().map_or((spanned.span.start.line, spanned.span.start.col), |(_, p)| (p.line, p.col));
    let value = found.map_or("nothing", |(v, _)| v);
    let doc = match names[..] {
        [section, field, ..] => reference::KEYS.iter().find(|k| k.section == section && k.key == field),
        _ => None,
    };
    let is_scale = key.as_deref().is_some_and(|k| SCALE_KEYS.iter().any(|s| k.starts_with(s)));
    // What a value error should end with: the key's documented rule and its default.
    let rule =
        doc.map(|d| format!(" (allowed: {}; default: {})", d.rule, d.value_in(&Config::default()))).unwrap_or_default();
    let ms = if names.last().is_some_and(|k| k.ends_with("_ms")) { " of milliseconds" } else { "" };
    let message = match &spanned.code {
        _ if fraction.is_some() => format!("expected a whole number{ms}, found {value}: drop the fraction{rule}"),
        RonError::NoSuchStructField { expected, found, .. } if names.len() <= 1 => format!(
            "unknown section `{found}`{}; the sections are {}",
            did_you_mean(found, expected),
            expected.join(", ")
        ),
        RonError::NoSuchStructField { expected, found, .. } => format!(
            "unknown key `{found}` in section `{}`{}; its keys are {}",
            names[..names.len() - 1].join("."),
            did_you_mean(found, expected),
            expected.join(", ")
        ),
        RonError::DuplicateStructField { field, .. } if names.is_empty() => {
            format!("section `{field}` is written twice; keep one")
        }
        RonError::DuplicateStructField { field, .. } => {
            format!("`{field}` is set twice in section `{}`; keep one", names.join("."))
        }
        RonError::TrailingCharacters => {
            "text after the closing `)` of the config: move it inside the parentheses or remove it".to_string()
        }
        RonError::NoSuchEnumVariant { expected, found, .. } if is_scale => format!(
            "unknown loss scale `{found}`{}: write Auto, or Fixed(65536.0) for a given scale",
            did_you_mean(found, expected)
        ),
        RonError::NoSuchEnumVariant { expected, found, .. } => format!(
            "unknown value `{found}`{}: write one of {} (as written, without quotes)",
            did_you_mean(found, expected),
            expected.join(", ")
        ),
        _ if is_scale && value.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '+') => {
            format!(
                "a given loss scale is written Fixed({value}): write Fixed({value}), or Auto to size it from the model"
            )
        }
        _ if is_scale && value.starts_with('-') => format!(
            "{value} is not a loss scale: a given scale is a positive number written Fixed(65536.0), or write Auto to \
             size it from the model"
        ),
        _ if is_scale && value.starts_with('"') => {
            format!("{value} is quoted: write Auto without quotes, or Fixed(65536.0) for a given scale")
        }
        _ if is_scale => format!(
            "{}: write Auto, or Fixed(65536.0) for a given scale (a positive number)",
            rename(&spanned.code.to_string())
        ),
        RonError::SuggestRawIdentifier(_) | RonError::ExpectedIdentifier => match doc {
            Some(d) => format!("`{value}` is not allowed here: write one of {}", d.rule),
            None => rename(&spanned.code.to_string()),
        },
        RonError::ExpectedOption => format!(
            "an optional value is written Some(...) or None: write Some({value}), or None to leave it unset{rule}"
        ),
        RonError::IntegerOutOfBounds => {
            let max = match names[..] {
                [section, field, ..] => integer_max(section, field),
                _ => u64::MAX,
            };
            format!("{value} is out of range: write a whole number from 0 to {max}{rule}")
        }
        RonError::ExpectedInteger | RonError::InvalidIntegerDigit { .. } => {
            let unit = if ms.is_empty() {
                ", without quotes"
            } else {
                " of milliseconds, without quotes or a unit (30 s = 30000)"
            };
            format!("expected a whole number{unit}, found {value}{rule}")
        }
        RonError::ExpectedFloat => format!("expected a number (like 0.5), found {value}{rule}"),
        RonError::ExpectedBoolean => format!("expected true or false, found {value}{rule}"),
        RonError::ExpectedString | RonError::ExpectedStringEnd => {
            format!("expected a string in double quotes, found {value}{rule}")
        }
        RonError::ExpectedArray => format!("expected a list in brackets, [\"a\", \"b\"], found {value}{rule}"),
        RonError::ExpectedNamedStructLike(_)
        | RonError::ExpectedStructLike
        | RonError::ExpectedDifferentStructName { .. }
            if names.is_empty() =>
        {
            "the file must be one `( ... )` holding the sections, e.g. `(stream: (streams: [\"btcusdt@trade\"]))`; \
             `keel config default` prints a complete one"
                .to_string()
        }
        RonError::ExpectedNamedStructLike(_) | RonError::ExpectedStructLike if names.len() == 1 => {
            format!("a section is written in parentheses, `{}: (key: value, ...)`, found {value}", names[0])
        }
        // A `try_from` of the schema (tls.min_version) already says what is allowed; drop its own key prefix.
        RonError::Message(m) => {
            let m = key.as_deref().and_then(|k| m.strip_prefix(k)).and_then(|m| m.strip_prefix(": ")).unwrap_or(m);
            rename(m)
        }
        other => rename(&other.to_string()),
    };
    ConfigError::Parse { key, message, line, column }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_means_only_whitespace_and_comments() {
        for blank in ["", " \n\t\n", "// nothing yet\n", "/* a /* nested */ comment */ // and a line"] {
            assert!(is_blank(blank), "{blank:?}");
        }
        for not_blank in ["()", "// c\n()", "/* unclosed", "/* c */ x"] {
            assert!(!is_blank(not_blank), "{not_blank:?}");
        }
    }

    /// A byte-order mark (Notepad's UTF-8) neither breaks a valid file nor shifts the line and
    /// column that an error names.
    #[test]
    fn a_byte_order_mark_is_ignored() {
        let plain = Config::default().to_ron();
        assert_eq!(parse(&format!("\u{feff}{plain}")).ok(), Some(Config::default()));
        assert!(matches!(parse("\u{feff}"), Err(ConfigError::Empty)));
        let bad = "(\n  heartbeat: (ping_interval_ms: -5),\n)";
        let message = |text: &str| parse(text).err().map(|e| e.to_string());
        assert_eq!(message(&format!("\u{feff}{bad}")), message(bad));
        assert!(message(bad).is_some_and(|m| m.contains("2:")), "{:?}", message(bad));
    }

    #[test]
    fn the_value_is_found_where_ron_points() {
        let text = "(\n  a: -5,\n  b:   \"30 s\\\"x\",\n  c: f16)";
        let at = |line, col| value_at(text, &Position { line, col }).map(|(v, p)| (v, p.line, p.col));
        assert_eq!(at(2, 7), Some(("-5", 2, 6)));
        assert_eq!(at(3, 5), Some(("\"30 s\\\"x\"", 3, 8)));
        assert_eq!(at(4, 6), Some(("f16", 4, 6)));
        assert_eq!(at(4, 9), None);
    }

    #[test]
    fn typos_find_their_key() {
        let keys = ["ping_interval_ms", "pong_timeout_ms"];
        assert_eq!(closest("ping_intervall_ms", &keys), Some("ping_interval_ms"));
        assert_eq!(closest("PONG_TIMEOUT_MS", &keys), Some("pong_timeout_ms"));
        assert_eq!(closest("seed", &keys), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn integer_widths_come_from_the_schema() {
        assert_eq!(integer_max("rest", "book_depth_limit"), u64::from(u16::MAX));
        assert_eq!(integer_max("heartbeat", "ping_interval_ms"), u64::MAX);
        assert_eq!(integer_max("stream", "max_connections"), u64::from(u32::MAX));
    }

    /// The scale keys named here are exactly the keys whose default is a `ScaleChoice`.
    #[test]
    fn scale_keys_match_the_schema() {
        let defaults = Config::default();
        let auto: Vec<String> = reference::KEYS
            .iter()
            .filter(|k| k.value_in(&defaults) == "Auto")
            .map(|k| format!("{}.{}", k.section, k.key))
            .collect();
        assert_eq!(auto, SCALE_KEYS);
    }
}
