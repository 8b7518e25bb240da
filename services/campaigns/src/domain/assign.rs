//! Stable assignment of a customer to the holdout or a variant: a hash of tenant, campaign
//! (its id, or its assignment seed when set) and customer, so the same customer lands in the same group however often they are
//! enrolled, on any replica, and the split can be recomputed from the ids alone.

/// Where a customer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Assignment {
    /// Gets nothing; measured only.
    Holdout,
    /// Index into the campaign's variants.
    Variant(usize),
}

/// 64-bit FNV-1a, then a finaliser so nearby ids spread over the whole range.
fn hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    mix(h)
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The group of `customer` in `campaign`: the holdout for `holdout_percent` of customers, else
/// a variant with probability proportional to its weight (weights positive).
pub(crate) fn assign(
    tenant: &str,
    campaign: &str,
    customer: &str,
    holdout_percent: u32,
    weights: &[u32],
) -> Assignment {
    let h = hash(&[tenant, campaign, customer]);
    if h % 10_000 < u64::from(holdout_percent) * 100 {
        return Assignment::Holdout;
    }
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return Assignment::Variant(0);
    }
    // A second, independent draw: the holdout cut must not skew the variant split.
    let mut pick = mix(h ^ 0x9e37_79b9_7f4a_7c15) % total;
    for (i, w) in weights.iter().enumerate() {
        if pick < u64::from(*w) {
            return Assignment::Variant(i);
        }
        pick -= u64::from(*w);
    }
    Assignment::Variant(weights.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_customer_always_lands_in_the_same_group() {
        for i in 0..100 {
            let c = format!("c-{i}");
            assert_eq!(
                assign("t", "camp", &c, 10, &[1, 1]),
                assign("t", "camp", &c, 10, &[1, 1])
            );
        }
    }

    #[test]
    fn shares_follow_the_holdout_and_the_weights() {
        let mut holdout = 0;
        let mut variants = [0usize; 2];
        let n = 100_000;
        for i in 0..n {
            match assign("t", "camp", &format!("customer-{i}"), 10, &[3, 1]) {
                Assignment::Holdout => holdout += 1,
                Assignment::Variant(v) => variants[v] += 1,
            }
        }
        let share = |x: usize| x as f64 / n as f64;
        assert!((share(holdout) - 0.10).abs() < 0.005, "{holdout}");
        assert!((share(variants[0]) - 0.675).abs() < 0.006, "{variants:?}");
        assert!((share(variants[1]) - 0.225).abs() < 0.006, "{variants:?}");
    }

    #[test]
    fn no_holdout_means_everyone_is_treated() {
        for i in 0..1000 {
            assert_ne!(
                assign("t", "camp", &format!("c{i}"), 0, &[1]),
                Assignment::Holdout
            );
        }
    }
}
