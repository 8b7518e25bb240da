//! Simulation from the models, for parameter-recovery tests, benchmarks and the demo shop.
//!
//! A small seeded generator (xoshiro256**, seeded through SplitMix64) rather than a
//! dependency: the same seed gives the same shop on every machine and every version.

use crate::gamma_gamma::{GammaGammaParams, SpendObservation};
use crate::nbd::{NbdModel, NbdParams, Observation};

/// A seeded pseudo-random generator (xoshiro256**). Not for secrets.
#[derive(Debug, Clone)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator whose whole sequence follows from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            // SplitMix64.
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            state: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Exponential with the given rate.
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -(1.0 - self.uniform()).ln() / rate
    }

    /// Standard normal (Marsaglia's polar method).
    pub fn normal(&mut self) -> f64 {
        loop {
            let u = 2.0 * self.uniform() - 1.0;
            let v = 2.0 * self.uniform() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                return u * (-2.0 * s.ln() / s).sqrt();
            }
        }
    }

    /// Gamma with `shape` and `rate` (Marsaglia & Tsang 2000; shape < 1 boosted).
    pub fn gamma(&mut self, shape: f64, rate: f64) -> f64 {
        if shape < 1.0 {
            let boost = self.uniform().max(f64::MIN_POSITIVE).powf(1.0 / shape);
            return self.gamma(shape + 1.0, rate) * boost;
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let z = self.normal();
            let v = (1.0 + c * z).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.uniform();
            if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
                return d * v / rate;
            }
        }
    }

    /// Beta(a, b).
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a, 1.0);
        let y = self.gamma(b, 1.0);
        x / (x + y)
    }
}

/// One customer's purchase process drawn from a BG/NBD or MBG/NBD population.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatedCustomer {
    /// Purchase rate while alive, per time unit.
    pub rate: f64,
    /// Dropout probability after a purchase.
    pub dropout: f64,
}

impl SimulatedCustomer {
    /// Draws a customer from the population.
    pub fn draw(rng: &mut Rng, params: NbdParams) -> Self {
        Self {
            rate: rng.gamma(params.r, params.alpha),
            dropout: rng.beta(params.a, params.b),
        }
    }

    /// Repeat purchase times in `(0, horizon]` after a first purchase at 0, calling
    /// `on_purchase` for each; under MBG/NBD the customer may also drop out right after
    /// the first purchase.
    pub fn purchases(
        &self,
        rng: &mut Rng,
        model: NbdModel,
        horizon: f64,
        mut on_purchase: impl FnMut(f64),
    ) {
        if model == NbdModel::MbgNbd && rng.chance(self.dropout) {
            return;
        }
        let mut t = 0.0;
        loop {
            t += rng.exponential(self.rate);
            if t > horizon {
                return;
            }
            on_purchase(t);
            if rng.chance(self.dropout) {
                return;
            }
        }
    }
}

/// Simulates `n` customers from `params`, each observed for a uniform time in
/// `[min_age, max_age]` after their first purchase.
pub fn simulate_nbd(
    rng: &mut Rng,
    model: NbdModel,
    params: NbdParams,
    n: usize,
    min_age: f64,
    max_age: f64,
) -> Vec<Observation> {
    (0..n)
        .map(|_| {
            let age = min_age + (max_age - min_age) * rng.uniform();
            let customer = SimulatedCustomer::draw(rng, params);
            let mut x = 0;
            let mut t_x = 0.0;
            customer.purchases(rng, model, age, |t| {
                x += 1;
                t_x = t;
            });
            Observation { x, t_x, t: age }
        })
        .collect()
}

/// Simulates `n` repeat customers' spend from `params`, with `min_x..=max_x` transactions each.
pub fn simulate_spend(
    rng: &mut Rng,
    params: GammaGammaParams,
    n: usize,
    min_x: u32,
    max_x: u32,
) -> Vec<SpendObservation> {
    (0..n)
        .map(|_| {
            let x = min_x + rng.below(u64::from(max_x - min_x + 1)) as u32;
            let nu = rng.gamma(params.q, params.gamma);
            let total: f64 = (0..x).map(|_| rng.gamma(params.p, nu)).sum();
            SpendObservation {
                x,
                mean_value: total / f64::from(x),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let mut a = Rng::new(9);
        let mut b = Rng::new(9);
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn samplers_have_the_right_means() {
        let mut rng = Rng::new(1);
        let n = 200_000;
        let mean = |f: &mut dyn FnMut() -> f64| (0..n).map(|_| f()).sum::<f64>() / n as f64;
        assert!((mean(&mut || rng.uniform()) - 0.5).abs() < 0.01);
        let mut rng = Rng::new(2);
        assert!((mean(&mut || rng.exponential(4.0)) - 0.25).abs() < 0.005);
        let mut rng = Rng::new(3);
        // Gamma(shape 0.3, rate 2): mean 0.15; Gamma(5, 0.5): mean 10.
        assert!((mean(&mut || rng.gamma(0.3, 2.0)) / 0.15 - 1.0).abs() < 0.03);
        let mut rng = Rng::new(4);
        assert!((mean(&mut || rng.gamma(5.0, 0.5)) / 10.0 - 1.0).abs() < 0.02);
        let mut rng = Rng::new(5);
        assert!((mean(&mut || rng.beta(0.8, 2.4)) - 0.25).abs() < 0.01);
        let mut rng = Rng::new(6);
        assert!(mean(&mut || rng.below(10) as f64) > 4.4);
    }
}
