//! Who may have names outside the cluster zone resolved: the cluster zone
//! answers anyone who reaches the addon, but forwarding is for the pods
//! and nodes only (sources inside the configured networks), so a DNS
//! addon on a node's address is no open resolver.

use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recursion {
    nets: Vec<(IpAddr, u8)>,
}

impl Recursion {
    /// Networks as `address/prefix` (a bare address is one host).
    pub fn parse<S: AsRef<str>>(nets: &[S]) -> Result<Recursion, String> {
        let mut out = Vec::new();
        for n in nets {
            let n = n.as_ref().trim();
            let (addr, prefix) = match n.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (n, None),
            };
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("{n:?}: not an address/prefix"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                Some(p) => p
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("{n:?}: the prefix must be 0 to {max}"))?,
                None => max,
            };
            out.push((ip, prefix));
        }
        Ok(Recursion { nets: out })
    }

    /// Anyone (for tests without sockets).
    pub fn anyone() -> Recursion {
        Recursion::parse(&["0.0.0.0/0", "::/0"]).expect("static networks")
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.nets
            .iter()
            .any(|(net, prefix)| within(ip, *net, *prefix))
    }
}

fn within(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_inside_the_networks_only() {
        let r =
            Recursion::parse(&["127.0.0.0/8", "10.244.0.0/16", "192.0.2.7", "::1/128"]).unwrap();
        for ok in [
            "127.0.0.1",
            "10.244.3.9",
            "192.0.2.7",
            "::1",
            "::ffff:10.244.0.1",
        ] {
            assert!(r.allows(ok.parse().unwrap()), "{ok}");
        }
        for no in ["10.245.0.1", "192.0.2.8", "8.8.8.8", "fe80::1"] {
            assert!(!r.allows(no.parse().unwrap()), "{no}");
        }
        assert!(Recursion::anyone().allows("203.0.113.1".parse().unwrap()));
        assert!(
            !Recursion::parse::<&str>(&[])
                .unwrap()
                .allows("127.0.0.1".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "::/129", "10.0.0.0/x"] {
            assert!(Recursion::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
