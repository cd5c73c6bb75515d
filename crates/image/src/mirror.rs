//! Finding the Debian mirror the host already uses, so vireo never needs one of its own.

use std::path::Path;

use crate::ImageError;

/// Environment variable that names the mirror directly.
pub const MIRROR_ENV: &str = "VIREO_DEBIAN_MIRROR";

/// Suite names of the Debian archive proper. Entries for other distributions or
/// third-party repositories use other suite names and are passed over.
const DEBIAN_SUITES: &[&str] = &[
    "stable",
    "testing",
    "unstable",
    "oldstable",
    "oldoldstable",
    "experimental",
    "sid",
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
];

/// Suffixes the Debian archive itself uses (`bookworm-updates`, ...); `-security` lives
/// in a separate archive that lacks most packages.
const SUITE_SUFFIXES: &[&str] = &[
    "",
    "updates",
    "backports",
    "backports-sloppy",
    "proposed-updates",
];

/// One `deb` source as apt sees it, whichever file format it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    pub uri: String,
    pub suites: Vec<String>,
}

/// The mirror to fetch from: `VIREO_DEBIAN_MIRROR` if set, else the first main Debian
/// archive in the host's apt sources (read in apt's own order).
pub(crate) fn find_mirror() -> Result<String, ImageError> {
    if let Ok(m) = std::env::var(MIRROR_ENV) {
        let m = m.trim();
        if !m.is_empty() {
            return Ok(m.trim_end_matches('/').to_string());
        }
    }
    let etc = Path::new("/etc/apt");
    let mut sources = Vec::new();
    if let Ok(text) = std::fs::read_to_string(etc.join("sources.list")) {
        sources.extend(parse_one_line(&text));
    }
    let mut parts: Vec<_> = std::fs::read_dir(etc.join("sources.list.d"))
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    parts.sort();
    for path in parts {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match path.extension().and_then(|e| e.to_str()) {
            Some("sources") => sources.extend(parse_deb822(&text)),
            Some("list") => sources.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    pick_debian_archive(&sources).ok_or(ImageError::NoMirror)
}

/// The URI of the first source that is the main Debian archive rather than the security
/// archive, a ports archive or a third-party repository.
pub(crate) fn pick_debian_archive(sources: &[Source]) -> Option<String> {
    sources.iter().find_map(|s| {
        let uri = s.uri.trim_end_matches('/');
        let last = uri.rsplit('/').next().unwrap_or("");
        let usable_scheme = ["http://", "https://", "file:", "ftp://"]
            .iter()
            .any(|p| uri.starts_with(p));
        let debian_suite = s.suites.iter().any(|suite| {
            let (base, suffix) = suite.split_once('-').unwrap_or((suite, ""));
            DEBIAN_SUITES.contains(&base) && SUITE_SUFFIXES.contains(&suffix)
        });
        let security =
            last.ends_with("-security") || s.suites.iter().all(|x| x.ends_with("-security"));
        (usable_scheme && debian_suite && !security).then(|| uri.to_string())
    })
}

/// Parses the one-line format: `deb [opt=val ...] URI suite [component...]`.
pub(crate) fn parse_one_line(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb") else {
            continue;
        };
        // Rejects `deb-src` while accepting both `deb [` and `deb\t`.
        if !rest.starts_with(char::is_whitespace) {
            continue;
        }
        let mut rest = rest.trim_start();
        if let Some(opts) = rest.strip_prefix('[') {
            let Some(end) = opts.find(']') else {
                continue;
            };
            rest = opts[end + 1..].trim_start();
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(Source {
                uri: uri.to_string(),
                suites: vec![suite.to_string()],
            });
        }
    }
    out
}

/// Parses the deb822 format of `*.sources` files: stanzas separated by blank lines,
/// `Field: value` lines, continuation lines starting with whitespace.
pub(crate) fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut flush = |fields: &mut Vec<(String, String)>| {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let types = get("Types").unwrap_or("");
        let enabled = get("Enabled").is_none_or(|v| !v.trim().eq_ignore_ascii_case("no"));
        if enabled && types.split_whitespace().any(|t| t == "deb") {
            let suites: Vec<String> = get("Suites")
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
            for uri in get("URIs").unwrap_or("").split_whitespace() {
                out.push(Source {
                    uri: uri.to_string(),
                    suites: suites.clone(),
                });
            }
        }
        fields.clear();
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut fields);
        } else if line.starts_with(char::is_whitespace) {
            if let Some((_, v)) = fields.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    flush(&mut fields);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main

# A comment between stanzas.
Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main

Types: deb deb-src
URIs: http://mirror.example/debian/
 http://second.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn deb822_picks_main_archive() {
        let sources = parse_deb822(DEB822);
        assert_eq!(sources.len(), 3, "{sources:?}");
        assert_eq!(
            pick_debian_archive(&sources).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn one_line_picks_main_archive() {
        let text = "\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/vendor.gpg] https://vendor.example/apt stable-vendor main
deb http://security.example/debian-security bookworm-security main
deb [ arch=amd64 ] http://mirror.example/debian bookworm main contrib
deb http://later.example/debian bookworm main
";
        let sources = parse_one_line(text);
        assert_eq!(sources.len(), 4, "{sources:?}");
        assert_eq!(sources[2].uri, "http://mirror.example/debian");
        assert_eq!(
            pick_debian_archive(&sources).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn third_party_and_security_only_give_nothing() {
        let sources = parse_one_line(
            "deb https://vendor.example/node nodistro main\n\
             deb http://mirror.example/debian-security trixie-security main\n\
             deb cdrom:[Debian]/ bookworm main\n",
        );
        assert_eq!(pick_debian_archive(&sources), None);
    }
}
