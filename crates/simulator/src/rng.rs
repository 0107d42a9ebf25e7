//! The simulator's pseudo-random numbers: SplitMix64 and the few draws the fake data needs
//! (uniform, normal, an index).
//!
//! Bars and screens are seeded by a stable hash of what they are for, so their values are the
//! simulator's data format: tests, fixtures and anyone comparing runs rely on them never changing.
//! That is why this generator is written here rather than taken from a crate. `rand`'s own
//! generators and distributions may change their output between versions; `rand_xoshiro` has
//! the same SplitMix64 and keeps its output stable within a major version, but the draws below
//! would still be ours, so a dependency would save eight lines and add a version boundary where
//! the data could change. The algorithm is the public reference (Steele, Lea and Flood's
//! SplitMix, in Vigna's `splitmix64.c`); a unit test pins its first outputs.

/// SplitMix64: a tiny PRNG whose sequence is fixed forever for a seed, so generated bars and
/// screens never change.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform in [0, n) (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn the_sequence_is_the_reference_one() {
        // The first outputs of the reference `splitmix64.c` from state 0.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(rng.next_u64(), 0x06c4_5d18_8009_454f);
    }
}
