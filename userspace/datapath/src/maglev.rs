//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4): a
//! lookup table of prime size M where each backend owns about M/N entries,
//! and removing one of N backends moves only the entries it owned (about
//! 1/N of flows). The table depends only on the seed, M and the set of
//! backends, so every node computes the same one.

use crate::model::BackendAddr;

/// Table sizes that may be configured (primes, as Maglev needs; the largest
/// is the map's fixed value size).
pub const SIZES: [u32; 7] = [251, 509, 1021, 2039, 4093, 8191, 16_381];
pub const DEFAULT_SIZE: u32 = 16_381;
pub const DEFAULT_SEED: u64 = 0x736b_6966_665f_6d67; // "skiff_mg"

/// The table: for each of `size` entries, an index into `backends` (which
/// must be sorted and without duplicates). Empty when there is no backend.
pub fn table(backends: &[BackendAddr], size: u32, seed: u64) -> Vec<u32> {
    let m = size as u64;
    let n = backends.len();
    if n == 0 {
        return Vec::new();
    }
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let mut name = [0u8; 6];
            name[..4].copy_from_slice(&b.addr.octets());
            name[4..].copy_from_slice(&b.port.to_be_bytes());
            let offset = hash(seed, &name) % m;
            let skip = hash(seed ^ 0x9e37_79b9_7f4a_7c15, &name) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut entry = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while entry[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entry[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entry
}

/// FNV-1a over the seed and the bytes, then a finalizer: stable across
/// builds and platforms (std's hashers promise neither).
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(bytes) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn backends(n: u8) -> Vec<BackendAddr> {
        (1..=n)
            .map(|i| BackendAddr {
                addr: Ipv4Addr::new(10, 0, 0, i),
                port: 8080,
            })
            .collect()
    }

    #[test]
    fn every_backend_gets_a_fair_share() {
        let t = table(&backends(10), DEFAULT_SIZE, DEFAULT_SEED);
        let mut counts = [0u32; 10];
        t.iter().for_each(|i| counts[*i as usize] += 1);
        for c in counts {
            assert!((1400..=1900).contains(&c), "share {c} of {DEFAULT_SIZE}");
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let all = backends(10);
        let before = table(&all, DEFAULT_SIZE, DEFAULT_SEED);
        let fewer: Vec<_> = all
            .iter()
            .copied()
            .filter(|b| b.addr.octets()[3] != 4)
            .collect();
        let after = table(&fewer, DEFAULT_SIZE, DEFAULT_SEED);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| all[**b as usize] != fewer[**a as usize])
            .count();
        let share = moved as f64 / DEFAULT_SIZE as f64;
        // The removed backend's tenth must move; little else may.
        assert!((0.09..0.15).contains(&share), "moved {share}");
    }

    #[test]
    fn same_seed_same_table_different_seed_different_table() {
        let b = backends(5);
        assert_eq!(table(&b, 251, 7), table(&b, 251, 7));
        assert_ne!(table(&b, 251, 7), table(&b, 251, 8));
        assert!(table(&[], 251, 7).is_empty());
    }
}
