//! Where `POST /fetch` may go: never to this host, its link, or a private
//! network unless the operator allows it (`edge.fetch_allow`), because the
//! edge would then serve whatever it read there to the public (SSRF: cloud
//! metadata at 169.254.169.254, admin ports on loopback, internal services).
//!
//! Names are resolved here, every resolved address is checked, and the
//! request is pinned to the checked addresses (so a second, different DNS
//! answer cannot slip in); every redirect goes through the same check.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// The operator's exceptions: host names (matched exactly, without case)
/// and networks (`10.1.0.0/16`, `127.0.0.1`, `fd00::/8`).
#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The URL is not one the edge fetches.
    #[error("url: {0}")]
    Url(String),
    /// The name did not resolve.
    #[error("url: {host} does not resolve")]
    Unresolved {
        /// The host.
        host: String,
    },
    /// An address the policy refuses.
    #[error("url: {host} resolves to {ip}, which edge.fetch_allow does not allow (loopback, link-local, private, unspecified and multicast destinations are refused)")]
    Forbidden {
        /// The host.
        host: String,
        /// The address refused.
        ip: IpAddr,
    },
}

impl FetchPolicy {
    /// Parses `edge.fetch_allow`; the error names the entry.
    pub fn parse(entries: &[String]) -> Result<FetchPolicy, String> {
        let mut p = FetchPolicy::default();
        for e in entries {
            let e = e.trim();
            if let Ok(net) = e.parse::<IpNet>() {
                p.nets.push(net);
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                p.nets.push(IpNet::from(ip));
            } else if !e.is_empty()
                && e.len() <= 253
                && e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                p.hosts.push(e.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "{e:?} is neither a host name nor an address or network"
                ));
            }
        }
        Ok(p)
    }

    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// Whether the edge may connect to `ip` for `host`.
    pub fn allows(&self, host: &str, ip: IpAddr) -> bool {
        self.allows_host(host) || self.nets.iter().any(|n| n.contains(&ip)) || !is_internal(ip)
    }

    /// The addresses to connect to for `url`, every one of them allowed.
    pub async fn resolve(&self, url: &reqwest::Url) -> Result<(String, Vec<SocketAddr>), Refused> {
        if url.scheme() != "http" {
            return Err(Refused::Url("only http:// URLs are fetched".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused::Url("credentials in the URL are not sent".into()));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let Some(raw_host) = url.host_str() else {
            return Err(Refused::Url("no host".into()));
        };
        let literal = raw_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>();
        let (host, addrs) = match literal {
            Ok(ip) => (ip.to_string(), vec![SocketAddr::new(ip, port)]),
            Err(_) => {
                let d = raw_host;
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((d, port))
                    .await
                    .map(|a| a.collect())
                    .unwrap_or_default();
                if addrs.is_empty() {
                    return Err(Refused::Unresolved {
                        host: d.to_string(),
                    });
                }
                (d.to_string(), addrs)
            }
        };
        if let Some(bad) = addrs.iter().find(|a| !self.allows(&host, a.ip())) {
            return Err(Refused::Forbidden { host, ip: bad.ip() });
        }
        Ok((host, addrs))
    }
}

/// Loopback, link-local, private, unspecified, multicast and the like:
/// addresses that reach this host or its own networks.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(v6),
        },
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || o[0] == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        // Reserved, 240.0.0.0/4.
        || o[0] >= 240
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local, fc00::/7.
        || (s[0] & 0xfe00) == 0xfc00
        // Link-local, fe80::/10.
        || (s[0] & 0xffc0) == 0xfe80
        // IPv4-compatible (deprecated) and NAT64 forms of IPv4 addresses.
        || (s[..6] == [0; 6])
        || (s[0] == 0x64 && s[1] == 0xff9b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused_by_default() {
        let internal = [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ];
        let public = [
            "93.184.216.34",
            "172.32.0.1",
            "8.8.8.8",
            "2606:4700::1111",
            "100.128.0.1",
        ];
        let p = FetchPolicy::default();
        for a in internal {
            assert!(!p.allows("h", a.parse().expect(a)), "{a} allowed");
        }
        for a in public {
            assert!(p.allows("h", a.parse().expect(a)), "{a} refused");
        }
    }

    #[test]
    fn the_allow_list_takes_hosts_and_networks() {
        let p = FetchPolicy::parse(&["127.0.0.0/8".into(), "Files.Internal".into(), "::1".into()])
            .expect("parses");
        assert!(p.allows("x", "127.0.0.2".parse().expect("ip")));
        assert!(p.allows("x", "::1".parse().expect("ip")));
        assert!(p.allows("files.internal.", "10.0.0.1".parse().expect("ip")));
        assert!(!p.allows("other", "10.0.0.1".parse().expect("ip")));
        assert!(FetchPolicy::parse(&["bad host!".into()]).is_err());
        assert!(FetchPolicy::parse(&["10.0.0.0/33".into()]).is_err());
    }
}
