//! The one place a provider key is taken out of what an upstream sent: error bodies
//! and their messages, success bodies, stream events (passed through or decoded).
//!
//! The key is found as written (`sk-abc`) and with JSON string escapes anywhere in it
//! (`\u0073k-abc`, `sk\/abc`), so a body that escapes characters the key is made of
//! still cannot carry it out; each occurrence, escapes included, becomes `[redacted]`.
//! Text without the key costs one fast substring search (and, when it has backslashes,
//! a check at the few places an escaped key could start) and is never copied.

use bytes::Bytes;
use memchr::memmem;

/// What an occurrence of the key becomes.
pub const REDACTED: &str = "[redacted]";

/// `text` with every occurrence of `key` (as written, or with JSON string escapes)
/// replaced by `[redacted]`; `None` when there is none (or no key), so callers copy
/// nothing in the common case.
pub fn scrub(text: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    if key.is_empty() {
        return None;
    }
    let mut out: Option<Vec<u8>> = None;
    let mut from = 0;
    while let Some((start, end)) = next_match(text, key, from) {
        let out = out.get_or_insert_with(|| Vec::with_capacity(text.len()));
        out.extend_from_slice(&text[from..start]);
        out.extend_from_slice(REDACTED.as_bytes());
        from = end;
    }
    let mut out = out?;
    out.extend_from_slice(&text[from..]);
    Some(out)
}

/// `bytes` scrubbed of `key`: the same bytes (no copy) when the key is not in them.
pub fn bytes(bytes: Bytes, key: Option<&str>) -> Bytes {
    match key.and_then(|k| scrub(&bytes, k.as_bytes())) {
        Some(clean) => Bytes::from(clean),
        None => bytes,
    }
}

/// `text` scrubbed of `key` in place; untouched when the key is not in it.
pub fn string(text: &mut String, key: Option<&str>) {
    if let Some(clean) = key.and_then(|k| scrub(text.as_bytes(), k.as_bytes())) {
        // Only whole UTF-8 sequences are replaced, by ASCII: still UTF-8.
        *text = String::from_utf8(clean)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    }
}

/// The first occurrence of `key` at or after `from`, as a byte range of `text`.
fn next_match(text: &[u8], key: &[u8], from: usize) -> Option<(usize, usize)> {
    let rest = &text[from..];
    let literal = memmem::find(rest, key).map(|i| from + i);
    // An escaped occurrence holds a backslash, and its first one is at most
    // `key.len() - 1` bytes (literal characters) after its start: only those starts
    // need the escape-aware check, and only those before the literal occurrence.
    let limit = literal.unwrap_or(text.len());
    let mut checked = from;
    for slash in memchr::memchr_iter(b'\\', rest) {
        let slash = from + slash;
        let low = slash.saturating_sub(key.len() - 1).max(checked);
        if low >= limit {
            break;
        }
        for start in low..=slash.min(limit - 1) {
            if let Some(end) = match_at(text, start, key) {
                return Some((start, end));
            }
        }
        checked = slash + 1;
    }
    literal.map(|start| (start, start + key.len()))
}

/// Where an occurrence of `key` starting at `start` ends, reading JSON string escapes
/// as the characters they stand for.
fn match_at(text: &[u8], start: usize, key: &[u8]) -> Option<usize> {
    let (mut at, mut matched) = (start, 0);
    while matched < key.len() {
        let byte = *text.get(at)?;
        if byte == key[matched] {
            at += 1;
            matched += 1;
        } else if byte == b'\\' {
            let (c, len) = unescape(&text[at..])?;
            let mut buf = [0; 4];
            let c = c.encode_utf8(&mut buf).as_bytes();
            if !key[matched..].starts_with(c) {
                return None;
            }
            at += len;
            matched += c.len();
        } else {
            return None;
        }
    }
    Some(at)
}

/// The character a JSON escape at the start of `text` stands for, and its length.
fn unescape(text: &[u8]) -> Option<(char, usize)> {
    let c = match *text.get(1)? {
        b'u' => {
            let high = hex4(text.get(2..6)?)?;
            if !(0xD800..0xDC00).contains(&high) {
                return Some((char::from_u32(high)?, 6));
            }
            // A surrogate pair: `\uD83D\uDE00`.
            if text.get(6..8)? != b"\\u" {
                return None;
            }
            let low = hex4(text.get(8..12)?)?;
            if !(0xDC00..0xE000).contains(&low) {
                return None;
            }
            let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
            return Some((char::from_u32(c)?, 12));
        }
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        c @ (b'"' | b'\\' | b'/') => char::from(c),
        _ => return None,
    };
    Some((c, 2))
}

fn hex4(digits: &[u8]) -> Option<u32> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| u32::from_str_radix(d, 16).ok())
        .filter(|_| digits.iter().all(u8::is_ascii_hexdigit))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-SCRUBkey-0123/abc";

    fn scrubbed(text: &str) -> Option<String> {
        scrub(text.as_bytes(), KEY.as_bytes()).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn text_without_the_key_is_not_copied() {
        assert_eq!(scrubbed(""), None);
        assert_eq!(scrubbed("hello sk-SCRUB world \\n \\u0073k"), None);
        assert_eq!(scrub(b"sk-SCRUBkey-0123/abc", b""), None);
        let body = Bytes::from_static(b"{\"text\":\"nothing here\\n\"}");
        let out = bytes(body.clone(), Some(KEY));
        assert_eq!(out.as_ptr(), body.as_ptr(), "the same bytes, not a copy");
    }

    #[test]
    fn the_key_as_written_is_redacted_everywhere() {
        assert_eq!(
            scrubbed(&format!("{KEY} and {KEY}{KEY}.")).unwrap(),
            "[redacted] and [redacted][redacted]."
        );
    }

    #[test]
    fn the_key_with_json_escapes_is_redacted() {
        for escaped in [
            r"\u0073k-SCRUBkey-0123/abc",
            r"\u0073\u006B\u002dSCRUBkey-0123/abc",
            r"sk-SCRUBkey-0123\/abc",
            r"sk-SCRUBkey-0123/ab\u0063",
            r"sk-SCRUB\u006bey-0123\u002fabc",
        ] {
            let body = format!(r#"{{"error":{{"message":"bad key: {escaped}; \n try again"}}}}"#);
            assert_eq!(
                scrubbed(&body).unwrap(),
                r#"{"error":{"message":"bad key: [redacted]; \n try again"}}"#,
                "{escaped}"
            );
        }
        // Not the key: a different escaped character, a cut escape.
        assert_eq!(scrubbed(r"\u0074k-SCRUBkey-0123/abc"), None);
        assert_eq!(scrubbed(r"sk-SCRUBkey-0123/ab\u006"), None);
    }

    #[test]
    fn the_escaped_and_the_literal_key_in_one_text_both_go() {
        let text = format!(r"{KEY} \u0073k-SCRUBkey-0123/abc {KEY}");
        assert_eq!(scrubbed(&text).unwrap(), "[redacted] [redacted] [redacted]");
        let text = format!(r"\u0073k-SCRUBkey-0123/abc {KEY}");
        assert_eq!(scrubbed(&text).unwrap(), "[redacted] [redacted]");
    }

    #[test]
    fn keys_with_non_ascii_and_escaped_characters_are_found() {
        let key = "key-é-😀-\"q\"";
        let text = r#"x key-\u00e9-\ud83d\ude00-\"q\" y"#;
        let out = scrub(text.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(out, b"x [redacted] y");
    }

    #[test]
    fn strings_are_scrubbed_in_place() {
        let mut text = format!("é {KEY} é");
        string(&mut text, Some(KEY));
        assert_eq!(text, "é [redacted] é");
        let mut text = KEY.to_string();
        string(&mut text, None);
        assert_eq!(text, KEY);
    }
}
