//! Host-to-guest port forwards, written the way QEMU's `hostfwd=` option spells them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The transport a forward carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Where a forward listens when no host address is given: the loopback only, so a forward is
/// never reachable from other machines unless the user asks for a wider address.
pub const DEFAULT_HOST_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One port forward: traffic to `host_port` on the host reaches `guest_port` in the guest.
///
/// Parsed from QEMU's `tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT`: `tcp::8080-:80`,
/// `tcp:127.0.0.1:8080-:80`, `udp:[::1]:5353-:53`, and the short `tcp:8080-:80`. Without an
/// address the forward listens on [`DEFAULT_HOST_ADDR`] only; `0.0.0.0` (every IPv4 address),
/// `[::]` (every IPv6 address) or one address of the host must be given to listen wider. The
/// guest address part must be empty: passt forwards to the guest's one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostFwd {
    pub protocol: Protocol,
    /// The host address to listen on, as given; `None` means [`DEFAULT_HOST_ADDR`].
    pub host_addr: Option<IpAddr>,
    pub host_port: u16,
    pub guest_port: u16,
}

impl HostFwd {
    /// A TCP forward on the default address.
    pub fn tcp(host_port: u16, guest_port: u16) -> HostFwd {
        HostFwd {
            protocol: Protocol::Tcp,
            host_addr: None,
            host_port,
            guest_port,
        }
    }

    /// The address the host side listens on.
    pub fn listen_addr(&self) -> IpAddr {
        self.host_addr.unwrap_or(DEFAULT_HOST_ADDR)
    }
}

/// Why a hostfwd string was refused; each names the part that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostFwdError {
    /// The protocol prefix is missing or not `tcp` or `udp`.
    #[error("hostfwd {spec:?}: protocol {proto:?} is not tcp or udp (expected tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT)")]
    Protocol { spec: String, proto: String },
    /// The `-:` separating the host and guest side is missing.
    #[error("hostfwd {spec:?}: expected tcp|udp:[ADDR]:HOSTPORT-:GUESTPORT, e.g. tcp::8080-:80")]
    Shape { spec: String },
    /// The host address is not an IP address.
    #[error("hostfwd {spec:?}: host address {addr:?} {why}")]
    Address {
        spec: String,
        addr: String,
        why: &'static str,
    },
    /// A guest address was given.
    #[error("hostfwd {spec:?}: guest address {addr:?} is not supported: the guest has one address, so leave it out (-:GUESTPORT)")]
    GuestAddress { spec: String, addr: String },
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
        let shape = || HostFwdError::Shape { spec: spec.into() };
        let (proto, rest) = spec.split_once(':').ok_or_else(shape)?;
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => {
                return Err(HostFwdError::Protocol {
                    spec: spec.into(),
                    proto: proto.into(),
                })
            }
        };
        // Addresses hold no '-', so the last one separates the host and the guest side.
        let (host, guest) = rest.rsplit_once('-').ok_or_else(shape)?;
        let (guest_addr, guest_port) = guest.rsplit_once(':').ok_or_else(shape)?;
        if !guest_addr.is_empty() {
            return Err(HostFwdError::GuestAddress {
                spec: spec.into(),
                addr: guest_addr.into(),
            });
        }
        let (host_addr, host_port) = split_host(spec, host)?;
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
            protocol,
            host_addr,
            host_port: port("host", host_port)?,
            guest_port: port("guest", guest_port)?,
        })
    }
}

/// `HOSTPORT`, `:HOSTPORT`, `IPV4:HOSTPORT` or `[IPV6]:HOSTPORT`.
fn split_host<'a>(spec: &str, host: &'a str) -> Result<(Option<IpAddr>, &'a str), HostFwdError> {
    let bad = |addr: &str, why| HostFwdError::Address {
        spec: spec.into(),
        addr: addr.into(),
        why,
    };
    if let Some(inner) = host.strip_prefix('[') {
        let (addr, port) = inner
            .split_once("]:")
            .ok_or_else(|| bad(host, "is not a bracketed IPv6 address followed by :PORT"))?;
        let a: Ipv6Addr = addr
            .parse()
            .map_err(|_| bad(addr, "is not an IPv6 address"))?;
        return Ok((Some(IpAddr::V6(a)), port));
    }
    match host.rsplit_once(':') {
        // The short form vireo has always taken: `tcp:8080-:80`.
        None => Ok((None, host)),
        Some(("", port)) => Ok((None, port)),
        Some((addr, _)) if addr.contains(':') => Err(bad(
            addr,
            "looks like an IPv6 address: write it in brackets, e.g. [::1]:8080",
        )),
        Some((addr, port)) => {
            let a: Ipv4Addr = addr.parse().map_err(|_| {
                bad(
                    addr,
                    "is not an IP address (expected e.g. 127.0.0.1, 0.0.0.0 or [::1])",
                )
            })?;
            Ok((Some(IpAddr::V4(a)), port))
        }
    }
}

impl fmt::Display for HostFwd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = match self.host_addr {
            None => String::new(),
            Some(IpAddr::V4(a)) => a.to_string(),
            Some(IpAddr::V6(a)) => format!("[{a}]"),
        };
        write!(
            f,
            "{}:{addr}:{}-:{}",
            self.protocol.name(),
            self.host_port,
            self.guest_port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(s: &str) -> HostFwd {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_qemu_syntax() {
        let f = fwd("tcp:8080-:80");
        assert_eq!(f, HostFwd::tcp(8080, 80));
        assert_eq!(f.listen_addr(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(f.to_string(), "tcp::8080-:80");
        assert_eq!(fwd("tcp::2222-:22"), HostFwd::tcp(2222, 22));
        assert_eq!(fwd("tcp:65535-:1"), HostFwd::tcp(65535, 1));

        let f = fwd("tcp:127.0.0.1:8080-:80");
        assert_eq!(f.host_addr, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(f.to_string(), "tcp:127.0.0.1:8080-:80");
        let f = fwd("udp:[::1]:5353-:53");
        assert_eq!(f.protocol, Protocol::Udp);
        assert_eq!(f.host_addr, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!((f.host_port, f.guest_port), (5353, 53));
        assert_eq!(f.to_string(), "udp:[::1]:5353-:53");
        assert_eq!(
            fwd("tcp:0.0.0.0:80-:80").listen_addr(),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(
            fwd("udp:[::]:53-:53").listen_addr(),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        );
        assert_eq!(fwd("udp::53-:53").protocol, Protocol::Udp);
        // Display and parse agree.
        for s in ["tcp::1-:2", "udp:[fd00::2]:3-:4", "tcp:192.0.2.2:5-:6"] {
            assert_eq!(fwd(&fwd(s).to_string()), fwd(s));
        }
    }

    #[test]
    fn refuses_malformed_specs_naming_the_bad_part() {
        let err = |s: &str| s.parse::<HostFwd>().unwrap_err();
        match err("sctp::53-:53") {
            HostFwdError::Protocol { proto, .. } => assert_eq!(proto, "sctp"),
            e => panic!("unexpected {e:?}"),
        }
        assert!(matches!(err("8080-:80"), HostFwdError::Protocol { .. }));
        assert!(matches!(err("tcp:8080:80"), HostFwdError::Shape { .. }));
        assert!(matches!(err("tcp:8080-80"), HostFwdError::Shape { .. }));
        match err("tcp::8080-10.0.2.15:80") {
            HostFwdError::GuestAddress { addr, .. } => assert_eq!(addr, "10.0.2.15"),
            e => panic!("unexpected {e:?}"),
        }
        let msg = err("tcp:localhost:8080-:80").to_string();
        assert!(
            msg.contains("\"localhost\"") && msg.contains("IP address"),
            "{msg}"
        );
        let msg = err("tcp:my-host:8080-:80").to_string();
        assert!(msg.contains("\"my-host\""), "{msg}");
        let msg = err("udp:::1:53-:53").to_string();
        assert!(msg.contains("brackets"), "{msg}");
        let msg = err("udp:[::1:53-:53").to_string();
        assert!(msg.contains("[::1:53"), "{msg}");
        let msg = err("udp:[127.0.0.1]:53-:53").to_string();
        assert!(
            msg.contains("\"127.0.0.1\"") && msg.contains("IPv6"),
            "{msg}"
        );
        let msg = err("tcp:300.1.1.1:80-:80").to_string();
        assert!(msg.contains("\"300.1.1.1\""), "{msg}");
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
        assert!(matches!(
            err("tcp:127.0.0.1:-:80"),
            HostFwdError::Port { .. }
        ));
        let msg = err("tcp:http-:80").to_string();
        assert!(
            msg.contains("\"http\"") && msg.contains("1 to 65535"),
            "{msg}"
        );
        let msg = err("tcp:8080").to_string();
        assert!(msg.contains("HOSTPORT-:GUESTPORT"), "{msg}");
    }
}
