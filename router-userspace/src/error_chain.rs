//! One line for an error and its causes, the form every log field and `Display` uses.

use std::error::Error;

/// Renders `err` and its `source()` chain as `outer: cause: root`. A cause whose text an
/// outer error already includes (wrappers that format their source) is not repeated.
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot add the VIP")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect: {0}")]
    struct Formats(#[source] std::io::Error);

    #[test]
    fn causes_follow_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "EPERM");
        assert_eq!(error_chain(&Outer(io())), "cannot add the VIP: EPERM");
        assert_eq!(error_chain(&Formats(io())), "cannot connect: EPERM");
    }
}
