//! VM names: 1–63 characters, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`. They are path components (the run
//! directory, the cgroup) and URL path segments, so nothing else is allowed: no `/`, no leading
//! `.` or `-`, nothing that needs escaping.

/// Longest name accepted (a DNS label's length, so a name can be a guest's host name).
pub const MAX_LEN: usize = 63;

/// Checks a VM name; the error says what is wrong with it.
pub fn validate(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid VM name '{}': {why}", name.escape_debug()));
    let Some(first) = name.chars().next() else {
        return bad("it is empty");
    };
    if name.len() > MAX_LEN {
        return bad(&format!(
            "it is {} characters long; at most {MAX_LEN}",
            name.len()
        ));
    }
    if !first.is_ascii_alphanumeric() {
        return bad("it must start with a letter or a digit");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return bad(&format!(
            "'{}' is not allowed (letters, digits, '_', '.', '-' only)",
            c.escape_debug()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for n in ["a", "A9", "web-1", "db_2.test", &"x".repeat(63), "0"] {
            validate(n).unwrap();
        }
    }

    #[test]
    fn bad_names() {
        for (n, why) in [
            ("", "empty"),
            (&"x".repeat(64) as &str, "64 characters"),
            ("-a", "start with"),
            (".a", "start with"),
            ("_a", "start with"),
            ("a/b", "'/'"),
            ("a b", "' '"),
            ("é", "start with"),
            ("aé", "'é'"),
            ("a\n", "'\\n'"),
        ] {
            let e = validate(n).unwrap_err();
            assert!(e.contains(why), "{n:?}: {e}");
        }
    }
}
