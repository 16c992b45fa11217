//! The SSRF guard: an endpoint may only be reached at public addresses, unless the operator
//! allowed more with `--allow-cidr`. Every address a host resolves to must pass, and the HTTP
//! client connects only to addresses that passed, so DNS rebinding between check and connect
//! cannot sneak a private address in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address is refused: the rule, for the user's condition message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{addr} is {rule}")]
pub struct Blocked {
    /// The refused address.
    pub addr: IpAddr,
    /// The rule it breaks, e.g. `private (RFC 1918)`.
    pub rule: &'static str,
}

/// The rule a non-public IPv4 address falls under, if any.
fn v4_rule(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match () {
        _ if ip.is_unspecified() || a == 0 => "in 0.0.0.0/8 (this network)",
        _ if ip.is_loopback() => "a loopback address (127.0.0.0/8)",
        _ if ip.is_private() => "a private address (RFC 1918)",
        _ if ip.is_link_local() => "link-local (169.254.0.0/16, cloud metadata)",
        _ if a == 100 && (64..128).contains(&b) => "shared address space (100.64.0.0/10, CGNAT)",
        _ if a == 192 && b == 0 && c == 0 => "IETF protocol assignments (192.0.0.0/24)",
        _ if ip.is_documentation() => "a documentation address (TEST-NET)",
        _ if a == 198 && (18..20).contains(&b) => "benchmarking space (198.18.0.0/15)",
        _ if ip.is_multicast() => "multicast (224.0.0.0/4)",
        _ if ip.is_broadcast() => "the broadcast address",
        _ if a >= 240 => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

/// The rule a non-public IPv6 address falls under, if any (embedded IPv4 forms are unwrapped).
fn v6_rule(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_rule(v4).map(|_| "an IPv4-mapped form of a non-public address");
    }
    Some(match () {
        _ if ip.is_unspecified() => "the unspecified address (::)",
        _ if ip.is_loopback() => "the loopback address (::1)",
        // ::/96, IPv4-compatible (deprecated): the embedded address decides, but it is never public.
        _ if s[..6] == [0; 6] => "an IPv4-compatible address (::/96)",
        _ if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] => {
            let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            return v4_rule(v4).map(|_| "a NAT64 form (64:ff9b::/96) of a non-public address");
        }
        _ if s[0] == 0x2002 => {
            let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
            return v4_rule(v4).map(|_| "a 6to4 form (2002::/16) of a non-public address");
        }
        _ if s[0] & 0xfe00 == 0xfc00 => "a unique local address (fc00::/7)",
        _ if s[0] & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        _ if s[0] & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        _ if s[0] == 0x2001 && s[1] == 0x0db8 => "a documentation address (2001:db8::/32)",
        _ if s[0] == 0x2001 && s[1] == 0 => "Teredo (2001::/32)",
        _ if s[0] == 0x0100 && s[1..4] == [0; 3] => "the discard prefix (100::/64)",
        _ => return None,
    })
}

/// Which addresses may be reached.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    allowed: Vec<IpNet>,
}

impl Guard {
    /// A guard that also lets `allowed` networks through.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// Check one address.
    pub fn check(&self, addr: IpAddr) -> Result<(), Blocked> {
        if self.allowed.iter().any(|net| net.contains(&addr)) {
            return Ok(());
        }
        let rule = match addr {
            IpAddr::V4(v4) => v4_rule(v4),
            IpAddr::V6(v6) => v6_rule(v6),
        };
        match rule {
            Some(rule) => Err(Blocked { addr, rule }),
            None => Ok(()),
        }
    }

    /// Check every address; the first refused one is the error.
    pub fn check_all(&self, addrs: &[SocketAddr]) -> Result<(), Blocked> {
        addrs.iter().try_for_each(|a| self.check(a.ip()))
    }

    /// Resolve `host` and check every address it has.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            self.check(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| GuardError::Resolve { host: host.to_string(), source })?
            .collect();
        if addrs.is_empty() {
            return Err(GuardError::NoAddresses { host: host.to_string() });
        }
        self.check_all(&addrs)?;
        Ok(addrs)
    }
}

/// Why a destination cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// An address it resolves to is one Hookline never sends to.
    #[error("endpoint blocked")]
    Blocked(#[from] Blocked),
    /// The name could not be resolved.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host name.
        host: String,
        /// What the resolver said.
        #[source]
        source: std::io::Error,
    },
    /// The name resolved to no address at all.
    #[error("{host} has no addresses")]
    NoAddresses {
        /// The host name.
        host: String,
    },
}

/// The HTTP client's resolver: it hands out only addresses the guard accepted.
#[derive(Clone)]
pub struct GuardedResolver(pub Arc<Guard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let addrs = guard.resolve(name.as_str(), 0).await.map_err(|e| Box::new(e) as Box<_>)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests;
