//! User-provided text on a terminal: descriptions, names and paths come from
//! configs, kernel pins and state files, and are printed by `status`,
//! `check`, `lint` and `validate`. Escaping their control characters keeps
//! them from moving the cursor, clearing the screen or forging output lines.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal raw: control characters (C0, DEL,
/// C1: newline, ESC, …) and the invisible ones that make text look like other
/// text (zero-width, bidirectional overrides, BOM).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// A field for the terminal: every unsafe character (newlines included) as
/// a Rust-style escape (`\n`, `\u{1b}`); other text unchanged.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_but(s, None)
}

/// Whole output for the terminal: like [`escape`], but line breaks stay.
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    escape_but(s, Some('\n'))
}

fn escape_but(s: &str, keep: Option<char>) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c) && Some(c) != keep) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) && Some(c) != keep {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("web tier"), "web tier");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
        assert_eq!(escape("sg-\u{202e}bew"), "sg-\\u{202e}bew");
        assert_eq!(escape("\u{9b}\u{7f}"), "\\u{9b}\\u{7f}");
        assert_eq!(escape_lines("one\ntwo\u{1b}"), "one\ntwo\\u{1b}");
        assert_eq!(escape("Ünïcødé"), "Ünïcødé");
    }
}

/// An error followed by its sources, joined by ": " (what anyhow's `{:#}`
/// prints), for the library's logs and status text: its errors keep their
/// causes as sources instead of in their own message.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod chain_tests {
    use super::Chain;

    #[derive(Debug, thiserror::Error)]
    #[error("attaching eth0")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_prints_every_cause_once() {
        let e = Outer(std::io::Error::from_raw_os_error(libc::EPERM));
        let text = Chain(&e).to_string();
        assert!(text.starts_with("attaching eth0: "), "{text}");
        assert_eq!(text.matches("os error 1").count(), 1, "{text}");
    }
}
