//! The client's address for per-address limits. `X-Forwarded-For` is believed only when
//! the direct peer is one of `TRUSTED_PROXIES`; then the client is the right-most address
//! that is not itself a trusted proxy.

use std::net::IpAddr;

use actix_web::HttpRequest;

/// An address range, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `address` or `address/prefix`.
    pub fn parse(raw: &str) -> Option<Self> {
        let (address, prefix) = match raw.trim().split_once('/') {
            Some((address, prefix)) => (address.parse::<IpAddr>().ok()?, prefix.parse::<u8>().ok()?),
            None => {
                let address = raw.trim().parse::<IpAddr>().ok()?;
                (address, if address.is_ipv4() { 32 } else { 128 })
            }
        };
        let bits = if address.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then_some(Self { address, prefix })
    }

    /// Whether `address` lies in the range.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(candidate)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(network) & mask == u32::from(candidate) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(candidate)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(network) & mask == u128::from(candidate) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// The client address of `request`, given the trusted proxies.
pub fn client_address(request: &HttpRequest, trusted_proxies: &[Network]) -> Option<IpAddr> {
    let peer = request.peer_addr()?.ip();
    // Every `X-Forwarded-For` line, in order, as one list: a proxy that adds a line of its own
    // (rather than appending to the client's) must not leave the client's line believed.
    let lines: Vec<&str> =
        request.headers().get_all("x-forwarded-for").map(|value| value.to_str().unwrap_or("unreadable")).collect();
    let forwarded = (!lines.is_empty()).then(|| lines.join(","));
    Some(resolve(peer, forwarded.as_deref(), trusted_proxies))
}

fn resolve(peer: IpAddr, forwarded_for: Option<&str>, trusted_proxies: &[Network]) -> IpAddr {
    let trusted = |address: IpAddr| trusted_proxies.iter().any(|network| network.contains(address));
    if !trusted(peer) {
        return peer;
    }
    let Some(forwarded_for) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in forwarded_for.rsplit(',') {
        let Ok(address) = hop.trim().parse::<IpAddr>() else {
            // An unparsable hop was written by someone we do not trust: stop believing.
            break;
        };
        client = address;
        if !trusted(address) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = [Network::parse("10.0.0.0/8").unwrap(), Network::parse("192.168.1.1").unwrap()];
        // An untrusted peer cannot choose its address.
        assert_eq!(resolve(ip("203.0.113.9"), Some("1.2.3.4"), &proxies), ip("203.0.113.9"));
        // A trusted proxy's forwarded client is used; spoofed hops left of it are ignored.
        assert_eq!(resolve(ip("10.1.2.3"), Some("6.6.6.6, 198.51.100.7"), &proxies), ip("198.51.100.7"));
        // Chains of trusted proxies are walked from the right.
        assert_eq!(resolve(ip("10.1.2.3"), Some("198.51.100.7, 192.168.1.1"), &proxies), ip("198.51.100.7"));
        assert_eq!(resolve(ip("10.1.2.3"), None, &proxies), ip("10.1.2.3"));
        assert_eq!(resolve(ip("10.1.2.3"), Some("garbage"), &proxies), ip("10.1.2.3"));
        // Two header lines read as one list: the proxy's own line (the last) is believed.
        assert_eq!(resolve(ip("10.1.2.3"), Some("203.0.113.7,198.51.100.9"), &proxies), ip("198.51.100.9"));
    }

    #[test]
    fn networks_parse_and_match() {
        assert!(Network::parse("10.0.0.0/8").unwrap().contains(ip("10.255.0.1")));
        assert!(!Network::parse("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
        assert!(Network::parse("::1").unwrap().contains(ip("::1")));
        assert!(Network::parse("127.0.0.1").unwrap().contains(ip("::ffff:127.0.0.1")));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["", "10.0.0.0/33", "not-an-ip", "10.0.0.0/x"] {
            assert!(Network::parse(bad).is_none(), "{bad}");
        }
    }
}
