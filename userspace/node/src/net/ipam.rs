//! Pod address management for one podCIDR, persisted as one file per
//! address in use (holding its owner), so a restart of the node daemon
//! never hands out an address a live pod holds. Allocation is a create-new
//! of the address's file: atomic, even between two processes.

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr> {
        let (a, p) = s
            .split_once('/')
            .with_context(|| format!("{s:?} is not a CIDR (a.b.c.d/n)"))?;
        let addr: Ipv4Addr = a.parse().with_context(|| format!("{s:?}: bad address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .with_context(|| format!("{s:?}: bad prefix"))?;
        let c = Cidr { addr, prefix };
        if c.network() != addr {
            bail!(
                "{s:?} has host bits set (the network is {}/{prefix})",
                c.network()
            );
        }
        Ok(c)
    }
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
    /// The first usable address: the pods' gateway on this node.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }
    /// Addresses pods may get: after the gateway, before broadcast.
    pub fn pod_range(&self) -> (u32, u32) {
        let net = u32::from(self.network());
        let size = if self.prefix == 0 {
            u32::MAX
        } else {
            (1u32 << (32 - self.prefix)) - 1
        };
        (net + 2, net + size - 1)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

pub struct Ipam {
    cidr: Cidr,
    dir: PathBuf,
}

impl Ipam {
    /// The allocator for `cidr`, its state under `dir`.
    pub fn open(dir: &Path, cidr: Cidr) -> Result<Ipam> {
        if cidr.prefix > 30 {
            bail!(
                "podCIDR {cidr} is too small: it needs room for a gateway and pods (at most /30)"
            );
        }
        let dir = dir.join(format!("{}_{}", cidr.network(), cidr.prefix));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Ipam { cidr, dir })
    }

    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    /// The address `owner` holds, if any.
    pub fn find(&self, owner: &str) -> Result<Option<Ipv4Addr>> {
        for (ip, o) in self.allocations()? {
            if o == owner {
                return Ok(Some(ip));
            }
        }
        Ok(None)
    }

    /// Every address in use and its owner.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let Ok(ip) = e.file_name().to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            let owner = fs::read_to_string(e.path()).unwrap_or_default();
            out.push((ip, owner.trim().to_string()));
        }
        out.sort();
        Ok(out)
    }

    /// Gives `owner` an address: the one it holds already, else the next
    /// free one after the last handed out (round robin, like host-local).
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr> {
        if let Some(ip) = self.find(owner)? {
            return Ok(ip);
        }
        let (first, last) = self.cidr.pod_range();
        let last_file = self.dir.join("last");
        let start = fs::read_to_string(&last_file)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|l| (first..=last).contains(l))
            .map_or(first, |l| if l >= last { first } else { l + 1 });
        let span = u64::from(last - first) + 1;
        for i in 0..span {
            let ip = first + ((u64::from(start - first) + i) % span) as u32;
            let ip = Ipv4Addr::from(ip);
            let path = self.dir.join(ip.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())?;
                    f.sync_all()?;
                    write_atomic(&last_file, ip.to_string().as_bytes())?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("claiming {}", path.display())),
            }
        }
        bail!(
            "podCIDR {} is exhausted: all {span} pod addresses are in use",
            self.cidr
        )
    }

    /// Releases what `owner` holds (nothing when it holds nothing).
    pub fn release(&self, owner: &str) -> Result<()> {
        for (ip, o) in self.allocations()? {
            if o == owner {
                fs::remove_file(self.dir.join(ip.to_string()))?;
            }
        }
        Ok(())
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_arithmetic() {
        let c = Cidr::parse("10.244.3.0/24").unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(
            c.pod_range(),
            (
                u32::from(Ipv4Addr::new(10, 244, 3, 2)),
                u32::from(Ipv4Addr::new(10, 244, 3, 254))
            )
        );
        assert!(c.contains(Ipv4Addr::new(10, 244, 3, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 4, 1)));
        assert!(Cidr::parse("10.244.3.1/24").is_err());
        assert!(Cidr::parse("10.244.3.0/33").is_err());
    }

    #[test]
    fn allocates_round_robin_survives_reopen_and_exhausts() {
        let dir = tempfile::tempdir().unwrap();
        let cidr = Cidr::parse("10.1.0.0/29").unwrap(); // pods: .2 ..= .6
        let ipam = Ipam::open(dir.path(), cidr).unwrap();
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(ipam.allocate("a").unwrap(), a, "same owner, same address");
        let b = ipam.allocate("b").unwrap();
        ipam.release("a").unwrap();
        // A restart: a new allocator on the same directory.
        let ipam = Ipam::open(dir.path(), cidr).unwrap();
        let c = ipam.allocate("c").unwrap();
        assert_ne!(c, b, "a live address is never handed out twice");
        assert_ne!(
            c, a,
            "round robin: a released address is not reused at once"
        );
        for o in ["d", "e", "f"] {
            ipam.allocate(o).unwrap();
        }
        let err = ipam.allocate("g").unwrap_err().to_string();
        assert!(err.contains("exhausted"), "{err}");
        let held: Vec<_> = ipam
            .allocations()
            .unwrap()
            .into_iter()
            .map(|(ip, _)| ip)
            .collect();
        assert_eq!(held.len(), 5);
        assert!(
            held.iter()
                .all(|ip| cidr.contains(*ip) && *ip != cidr.gateway())
        );
    }
}
