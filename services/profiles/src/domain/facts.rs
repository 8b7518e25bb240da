//! A customer's facts, kept current on every write without rescanning their history.
//!
//! [`FactsState`] is stored with the customer's facts row. Applying an order is
//! order-insensitive (first = min, last = max, days a set, the three most recent by time),
//! so facts built incrementally in any order equal facts recomputed from the raw orders —
//! the property the tests pin. Purchase days are UTC calendar days.
//!
//! The state is stored as protobuf (prost), not JSON: it is read and written for every
//! customer of every ingest batch, and JSON cost several times more.

use std::collections::BTreeMap;

use winback_proto::common::Channel;
use winback_proto::profiles::{ChannelConsent, CustomerFacts};

const US_PER_DAY: i64 = 86_400_000_000;
const RECENT_ORDERS: usize = 3;
const TOP_CATEGORIES: usize = 5;

/// The channels facts report, in this order.
pub(crate) const CHANNELS: [Channel; 5] = [
    Channel::Email,
    Channel::Sms,
    Channel::Push,
    Channel::Messenger,
    Channel::ManagerTask,
];

/// One order as facts see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderFact {
    pub(crate) order_id: String,
    pub(crate) placed_at_us: i64,
    /// Total net of refunds.
    pub(crate) total_minor: i64,
    /// Spend per category (lines' quantity × unit price).
    pub(crate) category_spend: Vec<(String, i64)>,
}

/// One of the most recent orders.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct RecentOrder {
    #[prost(int64, tag = "1")]
    pub(crate) placed_at_us: i64,
    #[prost(string, tag = "2")]
    pub(crate) order_id: String,
    #[prost(int64, tag = "3")]
    pub(crate) total_minor: i64,
}

/// Consent of one channel.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub(crate) struct ChannelFlags {
    /// Advertising consent recorded as granted.
    #[prost(bool, tag = "1")]
    pub(crate) advertising: bool,
    /// Service messages refused (allowed unless refused).
    #[prost(bool, tag = "2")]
    pub(crate) service_refused: bool,
}

/// Everything facts are derived from.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FactsState {
    #[prost(string, tag = "1")]
    pub(crate) currency: String,
    #[prost(int64, optional, tag = "2")]
    pub(crate) first_purchase_us: Option<i64>,
    #[prost(int64, optional, tag = "3")]
    pub(crate) last_purchase_us: Option<i64>,
    /// Distinct purchase days (days since the epoch), ascending.
    #[prost(int64, repeated, tag = "4")]
    pub(crate) purchase_days: Vec<i64>,
    #[prost(int64, tag = "5")]
    pub(crate) order_count: i64,
    #[prost(int64, tag = "6")]
    pub(crate) total_minor: i64,
    #[prost(message, repeated, tag = "7")]
    pub(crate) recent: Vec<RecentOrder>,
    #[prost(btree_map = "string, int64", tag = "8")]
    pub(crate) category_spend: BTreeMap<String, i64>,
    #[prost(int64, optional, tag = "9")]
    pub(crate) last_open_us: Option<i64>,
    #[prost(int64, optional, tag = "10")]
    pub(crate) last_click_us: Option<i64>,
    #[prost(int64, optional, tag = "11")]
    pub(crate) last_visit_us: Option<i64>,
    #[prost(int64, optional, tag = "12")]
    pub(crate) last_cart_us: Option<i64>,
    #[prost(int64, tag = "13")]
    pub(crate) last_cart_value_minor: i64,
    #[prost(int64, optional, tag = "14")]
    pub(crate) last_product_view_us: Option<i64>,
    #[prost(int64, optional, tag = "15")]
    pub(crate) last_support_us: Option<i64>,
    #[prost(int64, optional, tag = "16")]
    pub(crate) last_sent_us: Option<i64>,
    #[prost(int32, tag = "17")]
    pub(crate) consecutive_unopened: i32,
    #[prost(int64, tag = "18")]
    pub(crate) bonus_points: i64,
    #[prost(int64, optional, tag = "19")]
    pub(crate) bonus_nearest_expiry_us: Option<i64>,
    /// Consent per channel (proto enum value as key).
    #[prost(btree_map = "int32, message", tag = "20")]
    pub(crate) consent: BTreeMap<i32, ChannelFlags>,
    #[prost(bool, tag = "21")]
    pub(crate) has_email: bool,
    #[prost(bool, tag = "22")]
    pub(crate) has_phone: bool,
    #[prost(bool, tag = "23")]
    pub(crate) has_push: bool,
    #[prost(bool, tag = "24")]
    pub(crate) do_not_contact: bool,
    #[prost(string, tag = "25")]
    pub(crate) time_zone: String,
    #[prost(string, tag = "26")]
    pub(crate) locale: String,
    #[prost(bool, tag = "27")]
    pub(crate) erased: bool,
    #[prost(int64, tag = "28")]
    pub(crate) updated_at_us: i64,
    /// Channels whose contact delivery suppressed (hard bounce, STOP, unregistered token).
    #[prost(int32, repeated, tag = "29")]
    pub(crate) suppressed_channels: Vec<i32>,
    /// Net spend of the first purchase day's orders: the total less this is what the
    /// repeat purchase days spent (Gamma-Gamma's input).
    #[prost(int64, tag = "30")]
    pub(crate) first_day_total_minor: i64,
}

fn max_opt(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.max(b)))
}

impl FactsState {
    /// Adds one (not cancelled) order.
    pub(crate) fn apply_order(&mut self, order: &OrderFact) {
        let day = order.placed_at_us.div_euclid(US_PER_DAY);
        match self.purchase_days.first() {
            Some(&first) if day > first => {}
            Some(&first) if day == first => {
                self.first_day_total_minor =
                    self.first_day_total_minor.saturating_add(order.total_minor);
            }
            _ => self.first_day_total_minor = order.total_minor,
        }
        self.first_purchase_us = Some(
            self.first_purchase_us
                .map_or(order.placed_at_us, |f| f.min(order.placed_at_us)),
        );
        self.last_purchase_us = max_opt(self.last_purchase_us, order.placed_at_us);
        if let Err(at) = self.purchase_days.binary_search(&day) {
            self.purchase_days.insert(at, day);
        }
        self.order_count += 1;
        self.total_minor = self.total_minor.saturating_add(order.total_minor);
        for (category, spend) in &order.category_spend {
            let entry = self.category_spend.entry(category.clone()).or_default();
            *entry = entry.saturating_add(*spend);
        }
        self.recent.push(RecentOrder {
            placed_at_us: order.placed_at_us,
            order_id: order.order_id.clone(),
            total_minor: order.total_minor,
        });
        self.recent
            .sort_by(|a, b| (b.placed_at_us, &b.order_id).cmp(&(a.placed_at_us, &a.order_id)));
        self.recent.truncate(RECENT_ORDERS);
    }

    /// Rebuilds every order-derived fact from the customer's orders, net of refunds (after
    /// a refund or a cancellation, and for facts as of a past time).
    pub(crate) fn recompute_orders(&mut self, orders: &[OrderFact]) {
        self.first_day_total_minor = 0;
        self.first_purchase_us = None;
        self.last_purchase_us = None;
        self.purchase_days.clear();
        self.order_count = 0;
        self.total_minor = 0;
        self.recent.clear();
        self.category_spend.clear();
        for order in orders {
            self.apply_order(order);
        }
    }

    /// Forgets every fact of engagement (opens, clicks, visits, carts, views, support, sends),
    /// to be replayed from the stored events of a period.
    pub(crate) fn clear_engagement(&mut self) {
        self.last_open_us = None;
        self.last_click_us = None;
        self.last_visit_us = None;
        self.last_cart_us = None;
        self.last_cart_value_minor = 0;
        self.last_product_view_us = None;
        self.last_support_us = None;
        self.last_sent_us = None;
        self.consecutive_unopened = 0;
    }

    /// A message was sent to the customer.
    pub(crate) fn apply_sent(&mut self, at_us: i64) {
        self.last_sent_us = max_opt(self.last_sent_us, at_us);
        if self.last_open_us.is_none_or(|open| at_us > open) {
            self.consecutive_unopened = self.consecutive_unopened.saturating_add(1);
        }
    }

    /// A message was opened (a click counts as an open too).
    pub(crate) fn apply_open(&mut self, at_us: i64) {
        self.last_open_us = max_opt(self.last_open_us, at_us);
        self.consecutive_unopened = 0;
    }

    /// Mean and sample standard deviation of the intervals between purchase days, in days.
    pub(crate) fn intervals(&self) -> (f64, f64) {
        let days = &self.purchase_days;
        if days.len() < 2 {
            return (0.0, 0.0);
        }
        let gaps: Vec<f64> = days.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let spread = if gaps.len() < 2 {
            0.0
        } else {
            (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        (mean, spread)
    }

    /// The facts served to other services.
    pub(crate) fn render(&self, customer_id: &str) -> CustomerFacts {
        let ts = |us: Option<i64>| {
            us.and_then(chrono::DateTime::from_timestamp_micros)
                .map(winback_platform::time::to_timestamp)
        };
        let (mean_interval_days, interval_stddev_days) = self.intervals();
        let average = |total: i64, n: i64| {
            if n == 0 {
                0
            } else {
                (total + n / 2).div_euclid(n)
            }
        };
        let recent_total: i64 = self.recent.iter().map(|r| r.total_minor).sum();
        let mut categories: Vec<(&String, &i64)> = self.category_spend.iter().collect();
        categories.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let channels = CHANNELS
            .iter()
            .map(|&channel| {
                let flags = self
                    .consent
                    .get(&(channel as i32))
                    .copied()
                    .unwrap_or_default();
                let has_contact = match channel {
                    Channel::Email => self.has_email,
                    Channel::Sms | Channel::ManagerTask => self.has_phone,
                    Channel::Push => self.has_push,
                    _ => false,
                };
                let reachable = !self.do_not_contact && !self.erased;
                ChannelConsent {
                    channel: channel as i32,
                    advertising: reachable && flags.advertising,
                    service: reachable && !flags.service_refused,
                    has_contact: has_contact && !self.erased,
                    suppressed: self.suppressed_channels.contains(&(channel as i32)),
                }
            })
            .collect();
        CustomerFacts {
            customer_id: customer_id.to_owned(),
            first_purchase_at: ts(self.first_purchase_us),
            last_purchase_at: ts(self.last_purchase_us),
            purchase_days: self.purchase_days.len() as i32,
            order_count: self.order_count as i32,
            currency: self.currency.clone(),
            total_spent_minor: self.total_minor,
            average_check_minor: average(self.total_minor, self.order_count),
            repeat_spent_minor: if self.purchase_days.len() > 1 {
                self.total_minor.saturating_sub(self.first_day_total_minor)
            } else {
                0
            },
            recent_average_check_minor: average(recent_total, self.recent.len() as i64),
            mean_interval_days,
            interval_stddev_days,
            last_open_at: ts(self.last_open_us),
            last_click_at: ts(self.last_click_us),
            last_visit_at: ts(self.last_visit_us),
            last_cart_abandoned_at: ts(self.last_cart_us),
            last_cart_value_minor: self.last_cart_value_minor,
            consecutive_unopened: self.consecutive_unopened,
            top_categories: categories
                .into_iter()
                .take(TOP_CATEGORIES)
                .map(|(c, _)| c.clone())
                .collect(),
            bonus_points: self.bonus_points,
            bonus_nearest_expiry_at: ts(self.bonus_nearest_expiry_us),
            channels,
            do_not_contact: self.do_not_contact,
            time_zone: self.time_zone.clone(),
            locale: self.locale.clone(),
            erased: self.erased,
            updated_at: ts(Some(self.updated_at_us)),
            last_product_view_at: ts(self.last_product_view_us),
            last_support_contact_at: ts(self.last_support_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, day: i64, total: i64, categories: &[(&str, i64)]) -> OrderFact {
        OrderFact {
            order_id: id.into(),
            placed_at_us: day * US_PER_DAY + 3_600_000_000,
            total_minor: total,
            category_spend: categories
                .iter()
                .map(|(c, s)| ((*c).to_owned(), *s))
                .collect(),
        }
    }

    #[test]
    fn two_orders_on_one_day_are_one_purchase_day() {
        let mut state = FactsState::default();
        state.apply_order(&order("o1", 100, 1000, &[]));
        state.apply_order(&order("o2", 100, 3000, &[]));
        state.apply_order(&order("o3", 130, 2000, &[]));
        let facts = state.render("c1");
        assert_eq!(facts.purchase_days, 2);
        assert_eq!(facts.order_count, 3);
        assert_eq!(facts.average_check_minor, 2000);
        assert_eq!(facts.mean_interval_days, 30.0);
    }

    #[test]
    fn recent_average_uses_the_last_three_orders_by_time() {
        let mut state = FactsState::default();
        for (i, total) in [100, 200, 300, 400, 500].iter().enumerate() {
            state.apply_order(&order(&format!("o{i}"), 10 * i as i64, *total, &[]));
        }
        assert_eq!(state.render("c").recent_average_check_minor, 400);
        // A refund of 300 on the last order, as the refund path rebuilds the facts.
        let orders: Vec<OrderFact> = [100, 200, 300, 400, 200]
            .iter()
            .enumerate()
            .map(|(i, total)| order(&format!("o{i}"), 10 * i as i64, *total, &[]))
            .collect();
        state.recompute_orders(&orders);
        assert_eq!(state.render("c").recent_average_check_minor, 300);
        assert_eq!(state.render("c").total_spent_minor, 1200);
    }

    #[test]
    fn repeat_spend_leaves_out_every_order_of_the_first_purchase_day() {
        let mut state = FactsState::default();
        // Out of order: the first day's two orders arrive after a later one.
        state.apply_order(&order("o3", 130, 2000, &[]));
        assert_eq!(state.render("c").repeat_spent_minor, 0);
        state.apply_order(&order("o1", 100, 1000, &[]));
        state.apply_order(&order("o2", 100, 3000, &[]));
        state.apply_order(&order("o4", 130, 500, &[]));
        let facts = state.render("c");
        assert_eq!((facts.purchase_days, facts.repeat_spent_minor), (2, 2500));
        // An order before everything becomes the first day.
        state.apply_order(&order("o0", 90, 700, &[]));
        assert_eq!(state.render("c").repeat_spent_minor, 6500);
    }

    #[test]
    fn intervals_have_a_mean_and_a_spread() {
        let mut state = FactsState::default();
        for (i, day) in [0, 10, 30, 60].iter().enumerate() {
            state.apply_order(&order(&format!("o{i}"), *day, 100, &[]));
        }
        let (mean, spread) = state.intervals();
        assert_eq!(mean, 20.0);
        assert!((spread - 10.0).abs() < 1e-9);
    }

    #[test]
    fn top_categories_rank_by_spend() {
        let mut state = FactsState::default();
        state.apply_order(&order("o1", 1, 0, &[("shoes", 500), ("socks", 100)]));
        state.apply_order(&order("o2", 2, 0, &[("socks", 100), ("hats", 900)]));
        assert_eq!(
            state.render("c").top_categories,
            vec!["hats", "shoes", "socks"]
        );
    }

    #[test]
    fn opens_reset_the_unopened_streak() {
        let mut state = FactsState::default();
        state.apply_sent(10);
        state.apply_sent(20);
        assert_eq!(state.consecutive_unopened, 2);
        state.apply_open(25);
        assert_eq!(state.consecutive_unopened, 0);
        state.apply_sent(30);
        assert_eq!(state.consecutive_unopened, 1);
    }

    #[test]
    fn advertising_needs_consent_and_do_not_contact_refuses_everything() {
        let mut state = FactsState {
            has_email: true,
            ..FactsState::default()
        };
        state.consent.insert(
            Channel::Email as i32,
            ChannelFlags {
                advertising: true,
                service_refused: false,
            },
        );
        let email = |s: &FactsState| s.render("c").channels[0];
        assert!(email(&state).advertising && email(&state).service && email(&state).has_contact);
        assert!(
            !state.render("c").channels[1].advertising,
            "sms has no consent"
        );
        state.do_not_contact = true;
        assert!(!email(&state).advertising && !email(&state).service);
    }

    /// A small deterministic generator (no external crates): xorshift.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn incremental_facts_equal_a_recomputation_from_raw_orders_for_random_histories() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for history in 0..500 {
            let n = 1 + rng.below(25) as usize;
            let orders: Vec<OrderFact> = (0..n)
                .map(|i| {
                    let categories = ["a", "b", "c", "d", "e", "f", "g"];
                    let lines = (0..rng.below(4))
                        .map(|_| {
                            (
                                categories[rng.below(7) as usize].to_owned(),
                                rng.below(10_000) as i64,
                            )
                        })
                        .collect();
                    OrderFact {
                        order_id: format!("h{history}-o{i}"),
                        // Several orders may fall on one day, or at one instant.
                        placed_at_us: rng.below(400) as i64 * US_PER_DAY / 2 + rng.below(3) as i64,
                        total_minor: rng.below(100_000) as i64,
                        category_spend: lines,
                    }
                })
                .collect();
            // Arrival order is random; the recomputation reads them sorted by time.
            let mut arrival = orders.clone();
            for i in (1..arrival.len()).rev() {
                arrival.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let mut incremental = FactsState::default();
            for order in &arrival {
                incremental.apply_order(order);
            }
            let mut sorted = orders.clone();
            sorted.sort_by_key(|o| o.placed_at_us);
            let mut recomputed = FactsState::default();
            recomputed.recompute_orders(&sorted);
            assert_eq!(incremental, recomputed, "history {history}");

            // And against first principles, straight from the raw orders.
            let facts = incremental.render("c");
            let days: std::collections::BTreeSet<i64> = orders
                .iter()
                .map(|o| o.placed_at_us.div_euclid(US_PER_DAY))
                .collect();
            assert_eq!(facts.purchase_days as usize, days.len());
            assert_eq!(facts.order_count as usize, n);
            assert_eq!(
                facts.total_spent_minor,
                orders.iter().map(|o| o.total_minor).sum::<i64>()
            );
            let last = orders.iter().map(|o| o.placed_at_us).max().unwrap();
            assert_eq!(
                facts.last_purchase_at.unwrap().seconds,
                last.div_euclid(1_000_000)
            );
        }
    }
}
