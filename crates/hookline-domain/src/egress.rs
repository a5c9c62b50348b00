//! Egress policy: which addresses outbound webhook requests may reach. Private,
//! loopback, link-local (cloud metadata) and other non-public ranges are refused unless
//! an operator allow-lists them (`HOOKLINE_DELIVERY_ALLOW_CIDRS`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The addresses deliveries may connect to.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

impl EgressPolicy {
    /// A policy that refuses non-public addresses except those in `allow`.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Parses a comma-separated CIDR list such as `127.0.0.0/8,::1/128`.
    pub fn parse_allow_list(text: &str) -> Result<Vec<IpNet>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<IpNet>().map_err(|e| format!("{s:?}: {e}")))
            .collect()
    }

    /// Whether a connection to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        // A 6to4 address allow-listed still needs its embedded IPv4 permitted.
        if let Some(v4) = embedded_6to4(ip) {
            if !self.permits(IpAddr::V4(v4)) {
                return false;
            }
        }
        self.allow.iter().any(|net| net.contains(&ip)) || is_public(ip)
    }
}

/// The IPv4 address a 6to4 address (`2002:AABB:CCDD::/48`) tunnels to.
fn embedded_6to4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V6(v6) if v6.segments()[0] == 0x2002 => {
            let [_, high, low, ..] = v6.segments();
            Some(Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)))
        }
        _ => None,
    }
}

/// What the operator allows of subscription URLs: `https` only unless `http` is allowed,
/// and, when a port allow-list is given, only those ports. Checked when a subscription
/// is saved and again before every attempt (a record may reach the topic another way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlRules {
    allow_http: bool,
    ports: Vec<u16>,
}

impl UrlRules {
    /// Rules allowing `http` when `allow_http`, and only `ports` when not empty.
    pub fn new(allow_http: bool, ports: Vec<u16>) -> Self {
        Self { allow_http, ports }
    }

    /// Parses a comma-separated port list such as `443,8443` (empty: any port).
    pub fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!("{s:?} is not a port (1 to 65535)")),
            })
            .collect()
    }

    /// Why `url` is refused, if it is.
    pub fn check(&self, url: &url::Url) -> Result<(), String> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err("must be https (http is refused unless the operator sets \
                     HOOKLINE_DELIVERY_ALLOW_HTTP=true)"
                    .into())
            }
            _ => return Err("scheme must be https".into()),
        }
        let port = url.port_or_known_default().unwrap_or(0);
        if !self.ports.is_empty() && !self.ports.contains(&port) {
            return Err(format!(
                "port {port} is not among the permitted ports ({})",
                self.ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(())
    }
}

/// IPv4-mapped addresses (`::ffff:a.b.c.d`) are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An IPv4-compatible address (`::a.b.c.d`, deprecated since RFC 4291, still routed to
/// the IPv4 address by some stacks); `::` and `::1` are IPv6's own.
fn is_ipv4_compatible(ip: Ipv6Addr) -> bool {
    ip.segments()[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback()
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast (deprecated)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let [first, second, third, ..] = ip.segments();
    !(ip.is_unspecified()
        // Whatever IPv4 address it carries: no receiver needs one, and an allow-listed
        // IPv4 range must not open it.
        || is_ipv4_compatible(ip)
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || (first & 0xffc0) == 0xfec0 // site local (deprecated, still routed by some)
        || (first == 0x2001 && second == 0x0db8) // documentation
        // Teredo tunnels to an IPv4 address hidden (obfuscated) in the address.
        || (first == 0x2001 && second == 0x0000)
        // NAT64: the well-known 64:ff9b::/96 and the local-use 64:ff9b:1::/48, within
        // 64:ff9b::/32, all refused: they reach arbitrary IPv4.
        || (first == 0x0064 && second == 0xff9b)
        // 6to4 tunnels to the IPv4 address it embeds; refused whatever that is,
        // since the relay, not the policy, decides where it goes.
        || first == 0x2002
        || (first == 0x0100 && second == 0 && third == 0)) // discard-only
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_private_and_metadata_addresses_by_default() {
        let policy = EgressPolicy::default();
        for addr in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            // IPv4-compatible, whatever it carries.
            "::127.0.0.1",
            "::10.0.0.1",
            "::169.254.169.254",
            "::8.8.8.8",
            // 6to4, whether its embedded IPv4 is private or public.
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2002:808:808::1",
            // Teredo, NAT64 local-use, site local, 6to4 relay anycast, discard-only.
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::a00:1",
            "fec0::1",
            "feff::1",
            "192.88.99.1",
            "100::1",
        ] {
            assert!(!policy.permits(ip(addr)), "{addr}");
        }
        for addr in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            // Close to refused ranges, but outside them.
            "192.88.98.1",
            "2001:4860:4860::8888",
            "2003::1",
        ] {
            assert!(policy.permits(ip(addr)), "{addr}");
        }
    }

    #[test]
    fn urls_are_https_only_unless_http_is_allowed_and_ports_are_listed() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        let strict = UrlRules::default();
        assert!(strict.check(&url("https://erp.example/hooks")).is_ok());
        let err = strict.check(&url("http://erp.example/hooks")).unwrap_err();
        assert!(err.contains("must be https"), "{err}");
        assert!(strict.check(&url("ftp://erp.example/")).is_err());
        let lax = UrlRules::new(true, Vec::new());
        assert!(lax.check(&url("http://erp.example/hooks")).is_ok());
        assert!(lax.check(&url("ws://erp.example/hooks")).is_err());

        let ports = UrlRules::new(false, UrlRules::parse_ports("443, 8443").unwrap());
        assert!(ports.check(&url("https://erp.example/")).is_ok());
        assert!(ports.check(&url("https://erp.example:8443/")).is_ok());
        let err = ports.check(&url("https://erp.example:6379/")).unwrap_err();
        assert!(err.contains("port 6379"), "{err}");
        assert!(UrlRules::parse_ports("").unwrap().is_empty());
        assert!(UrlRules::parse_ports("0").is_err());
        assert!(UrlRules::parse_ports("443,https").is_err());
    }

    #[test]
    fn allow_list_opens_exactly_its_ranges() {
        let allow = EgressPolicy::parse_allow_list("127.0.0.0/8, ::1/128").unwrap();
        let policy = EgressPolicy::new(allow);
        assert!(policy.permits(ip("127.0.0.1")));
        assert!(policy.permits(ip("::1")));
        assert!(policy.permits(ip("::ffff:127.0.0.2")));
        assert!(!policy.permits(ip("10.0.0.1")));
        assert!(!policy.permits(ip("169.254.169.254")));
        assert!(
            !policy.permits(ip("::127.0.0.1")),
            "IPv4-compatible is not 127.0.0.1"
        );

        // Allow-listing 6to4 opens only the tunnels whose IPv4 end is permitted too.
        let policy = EgressPolicy::new(EgressPolicy::parse_allow_list("2002::/16").unwrap());
        assert!(policy.permits(ip("2002:808:808::1")));
        assert!(!policy.permits(ip("2002:7f00:1::1")));
        assert!(!policy.permits(ip("2002:a9fe:a9fe::1")));
        assert!(EgressPolicy::parse_allow_list("nonsense").is_err());
        assert!(EgressPolicy::parse_allow_list("").unwrap().is_empty());
    }
}
