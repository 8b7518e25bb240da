//! The demo's response model: who opens, clicks and buys after a touch, and who comes back
//! on their own. Every draw is a hash of the seed and what is being decided, so a run is
//! reproducible and a customer's holdout twin would decide the same way. The numbers are
//! illustrative, in the range the domain notes quote (opens 20–45 %, purchases after a
//! chain around 10 %), and differ by kind of customer, by step and by whether a coupon came
//! with the message.

use super::shop::Kind;

/// A uniform draw in [0, 1) for `what` about `key`.
pub fn draw(seed: u64, key: &str, what: &str) -> f64 {
    draw_parts(seed, [key.as_bytes()], what)
}

/// [`draw`] for a key given in parts (the same draw as for the parts joined), so a hot
/// loop need not build the key.
pub fn draw_parts<'k>(seed: u64, key: impl IntoIterator<Item = &'k [u8]>, what: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    let key = key.into_iter().flat_map(|part| part.iter().copied());
    for b in key.chain([0]).chain(what.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Chance that an email is opened; the dead's old addresses read nothing.
pub fn open(kind: Kind, dead_address: bool) -> f64 {
    if dead_address {
        return 0.0;
    }
    match kind {
        Kind::Regular => 0.50,
        Kind::Lapsing => 0.40,
        Kind::Seasonal => 0.35,
        Kind::OneVisit => 0.25,
        Kind::Dead => 0.05,
    }
}

/// Chance that an opened message is clicked.
pub fn click(kind: Kind) -> f64 {
    match kind {
        Kind::Regular => 0.35,
        Kind::Lapsing => 0.30,
        Kind::Seasonal => 0.25,
        Kind::OneVisit => 0.20,
        Kind::Dead => 0.10,
    }
}

/// Chance that a click ends in a purchase; a coupon helps.
pub fn buy(kind: Kind, coupon: bool) -> f64 {
    let base = match kind {
        Kind::Regular => 0.35,
        Kind::Lapsing => 0.30,
        Kind::Seasonal => 0.20,
        Kind::OneVisit => 0.15,
        Kind::Dead => 0.05,
    };
    if coupon { base * 1.6 } else { base }
}

/// Chance a customer comes back on their own on a given day (holdout and treated alike).
pub fn natural_daily(kind: Kind) -> f64 {
    match kind {
        Kind::Regular => 0.010,
        Kind::Lapsing => 0.003,
        Kind::Seasonal => 0.002,
        Kind::OneVisit => 0.001,
        Kind::Dead => 0.0002,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_and_reproducible() {
        let n = 20_000;
        let mean: f64 = (0..n)
            .map(|i| draw(3, &format!("k{i}"), "open"))
            .sum::<f64>()
            / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert_eq!(draw(3, "a", "open"), draw(3, "a", "open"));
        assert_ne!(draw(3, "a", "open"), draw(3, "a", "click"));
        assert_eq!(
            draw_parts(3, [b"c42".as_slice(), b":1700000000"], "natural"),
            draw(3, "c42:1700000000", "natural")
        );
    }
}
