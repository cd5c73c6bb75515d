//! VM and pool names: 1–63 characters, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`. They are path components
//! (the run directory, the cgroup) and URL path segments, so nothing else is allowed: no `/`, no
//! leading `.` or `-`, nothing that needs escaping.
//!
//! Volume names are file names in a pool's directory: 1–255 characters,
//! `[a-zA-Z0-9_][a-zA-Z0-9_.+-]*`, so never `.`, `..`, a hidden file (a clone in progress is
//! one), a `/`, or a `,` (which would end the name in a `--disk` entry).

/// Longest name accepted (a DNS label's length, so a name can be a guest's host name).
pub const MAX_LEN: usize = 63;

/// Longest volume name (a file name's limit on Linux file systems).
pub const MAX_VOLUME_LEN: usize = 255;

/// Checks a VM name; the error says what is wrong with it.
pub fn validate(name: &str) -> Result<(), String> {
    check("VM", name)
}

/// Checks a snapshot name (the same rules as a VM's; snapshot names are global and are their
/// directories' names under `<state-dir>/snapshots`).
pub fn validate_snapshot(name: &str) -> Result<(), String> {
    check("snapshot", name)
}

/// Checks a pool name (the same rules as a VM's).
pub fn validate_pool(name: &str) -> Result<(), String> {
    check("pool", name)
}

fn check(kind: &str, name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid {kind} name '{}': {why}",
            name.escape_debug()
        ))
    };
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

/// Checks a volume name; the error says what is wrong with it.
pub fn validate_volume(name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "invalid volume name '{}': {why}",
            name.escape_debug()
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "." || name == ".." {
        return bad("a volume is a file in the pool's directory, and this names a directory");
    }
    if name.len() > MAX_VOLUME_LEN {
        return bad(&format!(
            "it is {} bytes long; at most {MAX_VOLUME_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-')))
    {
        return bad(&format!(
            "'{}' is not allowed (letters, digits, '_', '.', '+', '-' only)",
            c.escape_debug()
        ));
    }
    if name.starts_with(['.', '+', '-']) {
        return bad("it must start with a letter, a digit or '_'");
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
        assert_eq!(
            validate_pool("a/b").unwrap_err(),
            "invalid pool name 'a/b': '/' is not allowed (letters, digits, '_', '.', '-' only)"
        );
    }

    #[test]
    fn volume_names() {
        for n in [
            "a",
            "base.qcow2",
            "_x",
            "9",
            "disk+1-2.img",
            &"v".repeat(255),
        ] {
            validate_volume(n).unwrap();
        }
        for (n, why) in [
            ("", "empty"),
            (".", "names a directory"),
            ("..", "names a directory"),
            ("../etc/passwd", "'/'"),
            ("a/b", "'/'"),
            (".hidden", "start with"),
            ("-rf", "start with"),
            ("a,overlay", "','"),
            ("a b", "' '"),
            ("é", "'é'"),
            (&"v".repeat(256) as &str, "256 bytes"),
        ] {
            let e = validate_volume(n).unwrap_err();
            assert!(e.contains(why), "{n:?}: {e}");
        }
    }
}
