//! A shop's history, reproducible from a seed: customers of five kinds with contacts,
//! consent and time zones, and their orders drawn from BG/NBD-style purchase processes
//! with Gamma-Gamma-style spend, so segmentation's models have something true to find.

use chrono::{DateTime, Duration, Utc};
use winback_proto::profiles::CustomerFacts;
use winback_scoring::simulate::{Rng, SimulatedCustomer};

/// What kind of customer, which decides history and (in `respond`) reactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Buys often and stays.
    Regular,
    /// Bought once.
    OneVisit,
    /// Bought for a while, then slowed down and stopped.
    Lapsing,
    /// Buys around the same time every year.
    Seasonal,
    /// Left long ago; the email address no longer reads mail.
    Dead,
}

/// One generated customer.
#[derive(Debug, Clone)]
pub struct ShopCustomer {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    pub email: String,
    pub phone: String,
    pub push_token: String,
    pub time_zone: String,
    pub email_consent: bool,
    pub sms_consent: bool,
    pub push_consent: bool,
    /// Mean order value in minor units.
    pub mean_check_minor: i64,
}

/// One generated order.
#[derive(Debug, Clone)]
pub struct ShopOrder {
    pub order_id: String,
    pub customer: usize,
    pub placed_at: DateTime<Utc>,
    pub total_minor: i64,
}

/// The generated shop.
#[derive(Debug, Default)]
pub struct Shop {
    pub customers: Vec<ShopCustomer>,
    pub orders: Vec<ShopOrder>,
    /// Customers who left a cart in the last day.
    pub abandoned_carts: Vec<usize>,
}

const ZONES: [(&str, u64); 6] = [
    ("Europe/Moscow", 55),
    ("Europe/Samara", 8),
    ("Asia/Yekaterinburg", 12),
    ("Asia/Novosibirsk", 10),
    ("Asia/Vladivostok", 7),
    ("Europe/Kaliningrad", 8),
];

const FIRST_NAMES: [&str; 8] = [
    "Anna", "Ivan", "Olga", "Pavel", "Maria", "Sergey", "Elena", "Dmitry",
];

fn zone(rng: &mut Rng) -> &'static str {
    let mut pick = rng.below(100);
    for (z, w) in ZONES {
        if pick < w {
            return z;
        }
        pick -= w;
    }
    ZONES[0].0
}

fn kind(rng: &mut Rng) -> Kind {
    match rng.below(100) {
        0..25 => Kind::Regular,
        25..55 => Kind::OneVisit,
        55..80 => Kind::Lapsing,
        80..90 => Kind::Seasonal,
        _ => Kind::Dead,
    }
}

/// A shop of `n` customers with three years of history up to `now`.
pub fn generate(n: usize, seed: u64, now: DateTime<Utc>) -> Shop {
    let mut rng = Rng::new(seed);
    let mut shop = Shop::default();
    let history_days = 3.0 * 365.0;
    for i in 0..n {
        let kind = kind(&mut rng);
        let id = format!("c{i:06}");
        let has_phone = rng.chance(0.6);
        let has_push = rng.chance(0.3);
        // Gamma-Gamma spend: each customer's own mean check around 2,500 RUB.
        let mean_check = rng.gamma(4.0, 4.0 / 2_500.0).clamp(300.0, 30_000.0);
        let customer = ShopCustomer {
            name: format!("{} {}", FIRST_NAMES[i % FIRST_NAMES.len()], i),
            email: if kind == Kind::Dead && rng.chance(0.5) {
                format!("{id}@old-mail.example")
            } else {
                format!("{id}@mail.example")
            },
            phone: if has_phone {
                format!("+7916{:07}", i % 10_000_000)
            } else {
                String::new()
            },
            push_token: if has_push {
                format!("push-token-{id}")
            } else {
                String::new()
            },
            time_zone: zone(&mut rng).to_owned(),
            email_consent: rng.chance(0.85),
            sms_consent: has_phone && rng.chance(0.4),
            push_consent: has_push && rng.chance(0.7),
            mean_check_minor: (mean_check * 100.0) as i64,
            id,
            kind,
        };
        // First purchase somewhere in the three years (the dead left early).
        let start = match kind {
            Kind::Dead => rng.uniform() * 0.4 * history_days,
            _ => rng.uniform() * (history_days - 30.0),
        };
        let first = now - Duration::days(history_days as i64)
            + Duration::seconds((start * 86_400.0) as i64);
        let mut times = vec![first];
        let horizon = (now - first).num_seconds() as f64 / 86_400.0;
        match kind {
            Kind::OneVisit => {}
            Kind::Seasonal => {
                let mut t = 365.0;
                while t < horizon && rng.chance(0.85) {
                    times.push(
                        first + Duration::seconds(((t + rng.normal() * 7.0) * 86_400.0) as i64),
                    );
                    t += 365.0;
                }
            }
            _ => {
                // BG/NBD: a purchase rate while alive, a chance to leave after each purchase.
                let (rate, dropout) = match kind {
                    Kind::Regular => (rng.gamma(3.0, 3.0 * 30.0), 0.02),
                    Kind::Lapsing => (rng.gamma(2.0, 2.0 * 40.0), 0.15),
                    _ => (rng.gamma(2.0, 2.0 * 50.0), 0.35),
                };
                let buyer = SimulatedCustomer { rate, dropout };
                buyer.purchases(
                    &mut rng,
                    winback_scoring::nbd::NbdModel::BgNbd,
                    horizon.min(if kind == Kind::Dead { 200.0 } else { horizon }),
                    |t| times.push(first + Duration::seconds((t * 86_400.0) as i64)),
                );
            }
        }
        for (k, at) in times.into_iter().enumerate() {
            if at >= now {
                continue;
            }
            let total = rng.gamma(5.0, 5.0 / mean_check).max(100.0);
            shop.orders.push(ShopOrder {
                order_id: format!("{}-{k}", customer.id),
                customer: i,
                placed_at: at,
                total_minor: (total * 100.0) as i64,
            });
        }
        if kind != Kind::Dead && rng.chance(0.01) {
            shop.abandoned_carts.push(i);
        }
        shop.customers.push(customer);
    }
    shop
}

/// The customers of an imported history, as the response model sees them. Their kind is
/// read from their facts: one purchase day → one visit; last purchase within twice their
/// usual interval → regular; within a year → lapsing; older → dead (seasonality is not
/// guessed). Their mean check is their average check.
pub fn from_facts(facts: &[CustomerFacts], now: DateTime<Utc>) -> Shop {
    let customers = facts
        .iter()
        .filter(|f| !f.erased)
        .map(|f| {
            let since_last = f
                .last_purchase_at
                .as_ref()
                .and_then(winback_platform::time::from_timestamp)
                .map_or(f64::INFINITY, |at| {
                    (now - at).num_seconds() as f64 / 86_400.0
                });
            let kind = if f.purchase_days <= 1 {
                Kind::OneVisit
            } else if since_last <= 2.0 * f.mean_interval_days.max(1.0) {
                Kind::Regular
            } else if since_last <= 365.0 {
                Kind::Lapsing
            } else {
                Kind::Dead
            };
            ShopCustomer {
                id: f.customer_id.clone(),
                kind,
                name: String::new(),
                email: String::new(),
                phone: String::new(),
                push_token: String::new(),
                time_zone: f.time_zone.clone(),
                email_consent: false,
                sms_consent: false,
                push_consent: false,
                mean_check_minor: f.average_check_minor.max(100),
            }
        })
        .collect();
    Shop {
        customers,
        ..Shop::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_shop() {
        let now = DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z")
            .unwrap()
            .to_utc();
        let a = generate(500, 7, now);
        let b = generate(500, 7, now);
        assert_eq!(a.orders.len(), b.orders.len());
        assert_eq!(a.customers[17].email, b.customers[17].email);
        assert!(a.orders.iter().all(|o| o.placed_at < now));
        let one_visit = a
            .customers
            .iter()
            .filter(|c| c.kind == Kind::OneVisit)
            .count();
        assert!((100..200).contains(&one_visit), "{one_visit}");
    }

    #[test]
    fn imported_customers_get_a_kind_from_their_facts() {
        let now = DateTime::parse_from_rfc3339("2026-06-01T10:00:00Z")
            .unwrap()
            .to_utc();
        let facts = |id: &str, days_ago: i64, purchase_days: i32, interval: f64| CustomerFacts {
            customer_id: id.into(),
            last_purchase_at: Some(winback_platform::time::to_timestamp(
                now - Duration::days(days_ago),
            )),
            purchase_days,
            mean_interval_days: interval,
            average_check_minor: 150_000,
            time_zone: "Asia/Vladivostok".into(),
            ..CustomerFacts::default()
        };
        let shop = from_facts(
            &[
                facts("once", 10, 1, 0.0),
                facts("regular", 50, 6, 30.0),
                facts("lapsing", 70, 6, 30.0),
                facts("dead", 400, 3, 30.0),
                CustomerFacts {
                    erased: true,
                    ..facts("erased", 10, 3, 30.0)
                },
            ],
            now,
        );
        let kinds: Vec<(&str, Kind)> = shop
            .customers
            .iter()
            .map(|c| (c.id.as_str(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("once", Kind::OneVisit),
                ("regular", Kind::Regular),
                ("lapsing", Kind::Lapsing),
                ("dead", Kind::Dead),
            ]
        );
        assert_eq!(shop.customers[1].time_zone, "Asia/Vladivostok");
        assert_eq!(shop.customers[1].mean_check_minor, 150_000);
    }
}
