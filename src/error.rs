//! Errors shown to people: an error and its causes on one line, each cause once.

use std::error::Error;
use std::fmt::{self, Write};

/// A cause kept as the source of one of our errors.
pub(crate) type BoxError = Box<dyn Error + Send + Sync>;

/// Displays an error followed by each of its sources (`: cause`), skipping a source whose text
/// the line already holds (errors whose own text includes their source's). Control characters
/// (a newline in a value the user gave, quoted back) are escaped, so it stays one line.
pub(crate) struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = s.source();
        }
        for c in line.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// `: {source}` when there is one.
pub(crate) struct Suffix<'a>(pub &'a Option<BoxError>);

impl fmt::Display for Suffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(e) => write!(f, ": {e}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Quiet(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let io = || std::io::Error::other("disk full");
        assert_eq!(Chain(&Repeats(io())).to_string(), "outer: disk full");
        assert_eq!(Chain(&Quiet(io())).to_string(), "outer: disk full");
        let typed = std::io::Error::other("unknown field `a\nb`");
        assert_eq!(
            Chain(&Quiet(typed)).to_string(),
            "outer: unknown field `a\\nb`"
        );
    }
}
