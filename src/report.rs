//! Errors as people read them: an error and its sources on one line, for logs, conditions and
//! API answers. Error types here keep their cause as a `#[source]` and leave it out of their own
//! message; [`Chain`] puts the two back together.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, `: `-separated. A source whose text the line
/// already holds is skipped (some libraries repeat their source in their own message).
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

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
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing the status failed")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("the API said no: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn every_source_is_shown_once() {
        let e = Outer(Middle(std::io::Error::other("connection reset")));
        assert_eq!(Chain(&e).to_string(), "writing the status failed: the API said no: connection reset");
    }
}
