//! Host-to-guest TCP port forwards, written the way QEMU's `hostfwd=` option spells them.

use std::fmt;
use std::str::FromStr;

/// One TCP port forward: connections to `host_port` on the host reach `guest_port` in the guest.
///
/// Parsed from QEMU's `tcp:HOSTPORT-:GUESTPORT` (the host address and guest address parts of
/// QEMU's full syntax are not supported: passt binds every host address and the guest has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostFwd {
    pub host_port: u16,
    pub guest_port: u16,
}

/// Why a `tcp:HOSTPORT-:GUESTPORT` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostFwdError {
    /// The protocol prefix is missing or not `tcp`.
    #[error("hostfwd {spec:?}: expected the form tcp:HOSTPORT-:GUESTPORT (only tcp is forwarded)")]
    Protocol { spec: String },
    /// The `-:` separating host and guest side is missing, or an address was given.
    #[error("hostfwd {spec:?}: expected tcp:HOSTPORT-:GUESTPORT, e.g. tcp:8080-:80 (addresses are not supported)")]
    Shape { spec: String },
    /// A port is not a number from 1 to 65535.
    #[error("hostfwd {spec:?}: {side} port {port:?} is not a number from 1 to 65535")]
    Port {
        spec: String,
        side: &'static str,
        port: String,
    },
}

impl FromStr for HostFwd {
    type Err = HostFwdError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let rest = spec
            .strip_prefix("tcp:")
            .ok_or_else(|| HostFwdError::Protocol { spec: spec.into() })?;
        let (host, guest) = rest
            .split_once("-:")
            .ok_or_else(|| HostFwdError::Shape { spec: spec.into() })?;
        // QEMU allows `tcp::8080-:80` (empty host address) and `tcp:127.0.0.1:8080-:80`; the
        // empty form is accepted, an address is not.
        let host = host.strip_prefix(':').unwrap_or(host);
        if host.contains(':') || guest.contains(':') {
            return Err(HostFwdError::Shape { spec: spec.into() });
        }
        let port = |side: &'static str, s: &str| -> Result<u16, HostFwdError> {
            match s.parse::<u16>() {
                Ok(p) if p != 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
                _ => Err(HostFwdError::Port {
                    spec: spec.into(),
                    side,
                    port: s.into(),
                }),
            }
        };
        Ok(HostFwd {
            host_port: port("host", host)?,
            guest_port: port("guest", guest)?,
        })
    }
}

impl fmt::Display for HostFwd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp:{}-:{}", self.host_port, self.guest_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_syntax() {
        let f: HostFwd = "tcp:8080-:80".parse().unwrap();
        assert_eq!(
            f,
            HostFwd {
                host_port: 8080,
                guest_port: 80
            }
        );
        assert_eq!(f.to_string(), "tcp:8080-:80");
        let f: HostFwd = "tcp::2222-:22".parse().unwrap();
        assert_eq!((f.host_port, f.guest_port), (2222, 22));
        let f: HostFwd = "tcp:65535-:1".parse().unwrap();
        assert_eq!((f.host_port, f.guest_port), (65535, 1));
    }

    #[test]
    fn refuses_malformed_specs_with_reasons() {
        let err = |s: &str| s.parse::<HostFwd>().unwrap_err();
        assert!(matches!(err("udp:53-:53"), HostFwdError::Protocol { .. }));
        assert!(matches!(err("8080-:80"), HostFwdError::Protocol { .. }));
        assert!(matches!(err("tcp:8080:80"), HostFwdError::Shape { .. }));
        assert!(matches!(err("tcp:8080-80"), HostFwdError::Shape { .. }));
        assert!(matches!(
            err("tcp:127.0.0.1:8080-:80"),
            HostFwdError::Shape { .. }
        ));
        assert!(matches!(
            err("tcp:8080-10.0.2.15:80"),
            HostFwdError::Shape { .. }
        ));
        match err("tcp:70000-:80") {
            HostFwdError::Port { side, port, .. } => {
                assert_eq!((side, port.as_str()), ("host", "70000"))
            }
            e => panic!("unexpected {e:?}"),
        }
        match err("tcp:8080-:0") {
            HostFwdError::Port { side, .. } => assert_eq!(side, "guest"),
            e => panic!("unexpected {e:?}"),
        }
        assert!(matches!(err("tcp:-:80"), HostFwdError::Port { .. }));
        assert!(matches!(err("tcp:+80-:80"), HostFwdError::Port { .. }));
        let msg = err("tcp:http-:80").to_string();
        assert!(
            msg.contains("\"http\"") && msg.contains("1 to 65535"),
            "{msg}"
        );
        let msg = err("tcp:8080").to_string();
        assert!(msg.contains("tcp:HOSTPORT-:GUESTPORT"), "{msg}");
    }
}
