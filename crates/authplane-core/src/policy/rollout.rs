//! Sticky percentage bucketing, in the manner of OpenFeature flagd's `fractional`:
//!
//! ```text
//! h      = murmur3_x86_32(salt + "/" + key, seed 0)
//! bucket = (h as u64 * 100_000) >> 32          // 0 ..= 99_999
//! enforced when bucket < percentage * 1000     // steps of 0.001 %
//! ```
//!
//! A user's bucket never changes while the salt stays, so raising the percentage only
//! adds users and lowering it removes the most recently added first.

/// Buckets per whole: 100 % = 100_000 buckets of 0.001 %.
pub const BUCKETS: u32 = 100_000;

/// A user's bucket, `0..BUCKETS`.
pub fn bucket(salt: &str, key: &str) -> u32 {
    let mut input = Vec::with_capacity(salt.len() + 1 + key.len());
    input.extend_from_slice(salt.as_bytes());
    input.push(b'/');
    input.extend_from_slice(key.as_bytes());
    let h = murmur3_x86_32(&input, 0);
    ((u64::from(h) * u64::from(BUCKETS)) >> 32) as u32
}

/// A percentage (0 to 100, up to three decimals) as a count of buckets.
pub fn percentage_to_buckets(percentage: f64) -> u32 {
    (percentage * 1000.0).round().clamp(0.0, f64::from(BUCKETS)) as u32
}

/// Whether a bucket is under enforcement at `enforced_buckets` (see
/// [`percentage_to_buckets`]).
pub fn is_enforced(bucket: u32, enforced_buckets: u32) -> bool {
    bucket < enforced_buckets
}

/// MurmurHash3, x86 32-bit variant (Austin Appleby's reference `MurmurHash3_x86_32`).
pub fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);

    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        h ^= mix(k);
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, byte) in tail.iter().enumerate() {
            k ^= u32::from(*byte) << (8 * i);
        }
        h ^= mix(k);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_reference_vectors() {
        let cases: [(&[u8], u32, u32); 8] = [
            (b"", 0, 0),
            (b"", 1, 0x514e_28b7),
            (b"", 0xffff_ffff, 0x81f1_6f39),
            (b"\0\0\0\0", 0, 0x2362_f9de),
            (b"aaaa", 0x9747_b28c, 0x5a97_808a),
            (b"abc", 0, 0xb3dd_93fa),
            (b"Hello, world!", 0x9747_b28c, 0x2488_4cba),
            (
                b"The quick brown fox jumps over the lazy dog",
                0x9747_b28c,
                0x2fa8_26cd,
            ),
        ];
        for (data, seed, expected) in cases {
            assert_eq!(
                murmur3_x86_32(data, seed),
                expected,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn percentages_in_thousandths() {
        assert_eq!(percentage_to_buckets(10.0), 10_000);
        assert_eq!(percentage_to_buckets(0.001), 1);
        assert_eq!(percentage_to_buckets(33.333), 33_333);
        assert_eq!(percentage_to_buckets(100.0), BUCKETS);
        assert_eq!(percentage_to_buckets(0.0), 0);
        assert!(!is_enforced(0, 0));
        assert!(is_enforced(BUCKETS - 1, BUCKETS));
    }

    #[test]
    fn ten_percent_of_100k_users_is_ten_percent_and_sticky() {
        let salt = "shop/payments";
        let buckets: Vec<u32> = (0..100_000)
            .map(|i| bucket(salt, &format!("user-{i}")))
            .collect();
        let at = |pct: f64| {
            let n = percentage_to_buckets(pct);
            buckets.iter().filter(|b| is_enforced(**b, n)).count() as f64 / 1000.0
        };
        for pct in [1.0, 10.0, 50.0, 90.0] {
            let share = at(pct);
            assert!((share - pct).abs() <= 0.5, "{pct}% enforced {share}%");
        }
        let ten = percentage_to_buckets(10.0);
        let fifty = percentage_to_buckets(50.0);
        assert!(
            buckets
                .iter()
                .filter(|b| is_enforced(**b, ten))
                .all(|b| is_enforced(*b, fifty))
        );
        assert!(buckets.iter().all(|b| *b < BUCKETS));
    }

    #[test]
    fn the_salt_reshuffles() {
        let a: Vec<u32> = (0..1000).map(|i| bucket("a", &i.to_string())).collect();
        let b: Vec<u32> = (0..1000).map(|i| bucket("b", &i.to_string())).collect();
        assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 20);
    }
}
