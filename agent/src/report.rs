//! Errors as people read them: one line, each cause once.

/// The error and its causes joined with ": ", skipping a cause its parent already quotes.
pub fn error_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Plain(#[source] std::io::Error);

    #[test]
    fn causes_appear_once() {
        let io = || std::io::Error::other("disk on fire");
        assert_eq!(super::error_line(&Quoting(io())), "outer: disk on fire");
        assert_eq!(super::error_line(&Plain(io())), "outer: disk on fire");
    }
}
