//! Whether this is a CI run, read one way everywhere (xtask, the build script, the
//! suites): under CI a missing tool or privilege fails loudly instead of skipping.

/// `CI` set to anything but empty, `0` or `false` (any case): GitHub's `true`, GitLab's
/// `true`, Jenkins-style `1`, and `.ci/run`'s `true` alike.
pub fn enabled() -> bool {
    std::env::var("CI").is_ok_and(|v| is_on(&v))
}

fn is_on(value: &str) -> bool {
    let v = value.trim();
    !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false")
}

#[cfg(test)]
mod tests {
    use super::is_on;

    #[test]
    fn every_usual_spelling_is_read_the_same() {
        for (value, on) in [
            ("true", true),
            ("1", true),
            ("TRUE", true),
            ("yes", true),
            ("", false),
            ("0", false),
            ("false", false),
            ("False", false),
        ] {
            assert_eq!(is_on(value), on, "CI={value:?}");
        }
    }
}
