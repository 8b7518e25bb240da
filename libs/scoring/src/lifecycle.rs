//! Purchase cycles and lifecycle states (DOMAIN §2).
//!
//! A customer's expected interval comes from their own history when they have one, else
//! from the tenant (its configured typical interval, a niche preset, or the median of its
//! regulars). Past the interval +30 % they are *sleeping*, past two intervals *nearly
//! lost*; engagement in the last 30 days makes an overdue customer *hot*; long silence
//! after a long absence makes them *dead*. Every threshold is a policy field.

/// Niche presets (DOMAIN §2): the range of days after which a customer counts as inactive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Niche {
    /// Tattoo studio: 180–270 days.
    Tattoo,
    /// Beauty salon: 60–90 days.
    Beauty,
    /// Café or delivery: 30–45 days.
    Cafe,
    /// Web shop: 90 days.
    WebShop,
    /// Retail: 90–180 days.
    Retail,
    /// Subscription: up to 270 days.
    Subscription,
}

impl Niche {
    /// The preset's inactivity range in days.
    pub fn inactivity_days(self) -> (f64, f64) {
        match self {
            Self::Tattoo => (180.0, 270.0),
            Self::Beauty => (60.0, 90.0),
            Self::Cafe => (30.0, 45.0),
            Self::WebShop => (90.0, 90.0),
            Self::Retail => (90.0, 180.0),
            Self::Subscription => (270.0, 270.0),
        }
    }

    /// The expected interval the preset implies: chosen so that "sleeping" (interval +30 %)
    /// starts exactly at the top of the preset's inactivity range.
    pub fn expected_cycle_days(self) -> f64 {
        self.inactivity_days().1 / 1.3
    }
}

/// Where a customer's expected interval came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleSource {
    /// Their own mean interval between purchase days.
    Own,
    /// The tenant's interval (configured, preset, or from its regulars).
    Tenant,
}

/// Thresholds of the cycle and lifecycle rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LifecyclePolicy {
    /// Sleeping once the interval is exceeded by this share (0.30).
    pub sleeping_overdue_ratio: f64,
    /// Nearly lost after this many missed intervals (2).
    pub nearly_lost_cycles: f64,
    /// Own history counts from this many intervals (2: three purchase days).
    pub min_own_intervals: u32,
    /// Dead: no engagement for this many days (180) …
    pub dead_no_engagement_days: f64,
    /// … and no purchase for this many days (730).
    pub dead_no_purchase_days: f64,
    /// Hot: engagement within this many days (30).
    pub hot_activity_window_days: f64,
    /// Engagement counts as gone after this many unopened messages in a row (20).
    pub unopened_streak_dead: u32,
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        Self {
            sleeping_overdue_ratio: 0.30,
            nearly_lost_cycles: 2.0,
            min_own_intervals: 2,
            dead_no_engagement_days: 180.0,
            dead_no_purchase_days: 730.0,
            hot_activity_window_days: 30.0,
            unopened_streak_dead: 20,
        }
    }
}

/// A customer's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LifecycleState {
    /// Never bought.
    Prospect,
    /// Buying within their own rhythm.
    Active,
    /// Overdue but engaged recently: one timely touch.
    HotInactive,
    /// Past the interval +30 %.
    Sleeping,
    /// Two or more intervals missed.
    NearlyLost,
    /// Long silent after a long absence.
    Dead,
}

impl LifecycleState {
    /// Stable key.
    pub fn key(self) -> &'static str {
        match self {
            Self::Prospect => "prospect",
            Self::Active => "active",
            Self::HotInactive => "hot_inactive",
            Self::Sleeping => "sleeping",
            Self::NearlyLost => "nearly_lost",
            Self::Dead => "dead",
        }
    }
}

/// What the rules look at, all in days before the as-of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signals {
    /// Distinct purchase days.
    pub purchase_days: u32,
    /// Days since the last purchase.
    pub days_since_purchase: f64,
    /// Mean interval between purchase days (0 with fewer than two).
    pub mean_interval_days: f64,
    /// Days since the latest open, click, visit, abandoned cart or product view; infinite if never.
    pub days_since_engagement: f64,
    /// Messages sent since the last open.
    pub consecutive_unopened: u32,
}

/// A customer's cycle and state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifecycle {
    /// The state.
    pub state: LifecycleState,
    /// Expected interval in days.
    pub expected_cycle_days: f64,
    /// Where it came from.
    pub cycle_source: CycleSource,
    /// Days past the expected interval (negative when not yet due).
    pub days_overdue: f64,
}

/// Tolerance for the boundary comparisons: 30 × 1.3 must be exactly 39 days.
const BOUNDARY_EPSILON: f64 = 1e-9;

impl LifecyclePolicy {
    /// The expected interval: own history with enough intervals, else `tenant_cycle_days`.
    #[inline]
    pub fn expected_cycle(&self, signals: &Signals, tenant_cycle_days: f64) -> (f64, CycleSource) {
        if signals.purchase_days > self.min_own_intervals && signals.mean_interval_days > 0.0 {
            (signals.mean_interval_days, CycleSource::Own)
        } else {
            (tenant_cycle_days, CycleSource::Tenant)
        }
    }

    /// The state of one customer.
    #[inline]
    pub fn classify(&self, signals: &Signals, tenant_cycle_days: f64) -> Lifecycle {
        let (cycle, source) = self.expected_cycle(signals, tenant_cycle_days);
        let days = signals.days_since_purchase;
        let overdue = days - cycle;
        let state = if signals.purchase_days == 0 {
            LifecycleState::Prospect
        } else {
            let past = |multiple: f64| days > cycle * multiple + BOUNDARY_EPSILON;
            let nearly_lost = past(self.nearly_lost_cycles);
            // Never engaged (infinite) counts as silent.
            let silent = signals.days_since_engagement > self.dead_no_engagement_days;
            let ignoring = signals.consecutive_unopened >= self.unopened_streak_dead;
            let hot = signals.days_since_engagement <= self.hot_activity_window_days;
            if silent
                && (days > self.dead_no_purchase_days + BOUNDARY_EPSILON
                    || (ignoring && nearly_lost))
            {
                LifecycleState::Dead
            } else if hot && past(1.0) {
                LifecycleState::HotInactive
            } else if nearly_lost {
                LifecycleState::NearlyLost
            } else if past(1.0 + self.sleeping_overdue_ratio) {
                LifecycleState::Sleeping
            } else {
                LifecycleState::Active
            }
        };
        Lifecycle {
            state,
            expected_cycle_days: cycle,
            cycle_source: source,
            days_overdue: overdue,
        }
    }

    /// The reasons for a classification, in words.
    pub fn reasons(&self, signals: &Signals, lifecycle: &Lifecycle) -> Vec<String> {
        let mut reasons = Vec::new();
        if lifecycle.state == LifecycleState::Prospect {
            reasons.push("no purchase yet".to_owned());
            return reasons;
        }
        let cycle = lifecycle.expected_cycle_days;
        let source = match lifecycle.cycle_source {
            CycleSource::Own => "own rhythm",
            CycleSource::Tenant => "the shop's typical interval",
        };
        reasons.push(format!(
            "last purchase {:.0} days ago; expected every {:.0} days ({source})",
            signals.days_since_purchase, cycle
        ));
        if signals.purchase_days == 1 {
            reasons.push("one visit only".to_owned());
        }
        let pct = (self.sleeping_overdue_ratio * 100.0).round();
        match lifecycle.state {
            LifecycleState::Active if lifecycle.days_overdue > 0.0 => reasons.push(format!(
                "due: {:.0} days past the interval, within +{pct:.0} %",
                lifecycle.days_overdue
            )),
            LifecycleState::Active => reasons.push(format!(
                "next purchase due in {:.0} days",
                -lifecycle.days_overdue
            )),
            LifecycleState::HotInactive => reasons.push(format!(
                "overdue by {:.0} days but engaged {:.0} days ago",
                lifecycle.days_overdue, signals.days_since_engagement
            )),
            LifecycleState::Sleeping => reasons.push(format!(
                "overdue by {:.0} days (cycle {cycle:.0} days +{pct:.0} %)",
                lifecycle.days_overdue
            )),
            LifecycleState::NearlyLost => reasons.push(format!(
                "missed {:.1} cycles (nearly lost from {})",
                signals.days_since_purchase / cycle,
                self.nearly_lost_cycles
            )),
            LifecycleState::Dead => {
                if signals.days_since_engagement.is_finite() {
                    reasons.push(format!(
                        "no engagement for {:.0} days",
                        signals.days_since_engagement
                    ));
                } else {
                    reasons.push("never engaged with a message".to_owned());
                }
                if signals.consecutive_unopened >= self.unopened_streak_dead {
                    reasons.push(format!(
                        "{} messages in a row unopened",
                        signals.consecutive_unopened
                    ));
                }
            }
            LifecycleState::Prospect => {}
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regular(days_since_purchase: f64) -> Signals {
        Signals {
            purchase_days: 5,
            days_since_purchase,
            mean_interval_days: 30.0,
            days_since_engagement: 60.0,
            consecutive_unopened: 0,
        }
    }

    fn state(signals: Signals) -> LifecycleState {
        LifecyclePolicy::default().classify(&signals, 90.0).state
    }

    #[test]
    fn sleeping_starts_just_past_the_interval_plus_thirty_percent() {
        assert_eq!(state(regular(30.0)), LifecycleState::Active);
        assert_eq!(
            state(regular(39.0)),
            LifecycleState::Active,
            "exactly +30 % is still within"
        );
        assert_eq!(state(regular(39.001)), LifecycleState::Sleeping);
    }

    #[test]
    fn nearly_lost_starts_just_past_two_cycles() {
        assert_eq!(
            state(regular(60.0)),
            LifecycleState::Sleeping,
            "exactly two cycles"
        );
        assert_eq!(state(regular(60.001)), LifecycleState::NearlyLost);
    }

    #[test]
    fn own_history_needs_two_intervals_else_the_tenant_interval_applies() {
        let policy = LifecyclePolicy::default();
        let two_days = Signals {
            purchase_days: 2,
            mean_interval_days: 10.0,
            ..regular(50.0)
        };
        let l = policy.classify(&two_days, 90.0);
        assert_eq!(
            (l.expected_cycle_days, l.cycle_source),
            (90.0, CycleSource::Tenant)
        );
        assert_eq!(l.state, LifecycleState::Active);
        let three_days = Signals {
            purchase_days: 3,
            ..two_days
        };
        let l = policy.classify(&three_days, 90.0);
        assert_eq!(
            (l.expected_cycle_days, l.cycle_source),
            (10.0, CycleSource::Own)
        );
        assert_eq!(l.state, LifecycleState::NearlyLost);
        // One-visit customers fall on the tenant interval: 117 days at a 90-day rhythm.
        let one_visit = Signals {
            purchase_days: 1,
            mean_interval_days: 0.0,
            ..regular(117.0)
        };
        assert_eq!(state(one_visit), LifecycleState::Active);
        assert_eq!(
            state(Signals {
                days_since_purchase: 117.5,
                ..one_visit
            }),
            LifecycleState::Sleeping
        );
    }

    #[test]
    fn recent_engagement_makes_an_overdue_customer_hot() {
        let engaged = Signals {
            days_since_engagement: 3.0,
            ..regular(45.0)
        };
        assert_eq!(state(engaged), LifecycleState::HotInactive);
        assert_eq!(
            state(Signals {
                days_since_engagement: 30.0,
                ..regular(100.0)
            }),
            LifecycleState::HotInactive
        );
        assert_eq!(
            state(Signals {
                days_since_engagement: 31.0,
                ..regular(100.0)
            }),
            LifecycleState::NearlyLost
        );
        // Not overdue: engagement does not make an active customer hot.
        assert_eq!(
            state(Signals {
                days_since_engagement: 3.0,
                ..regular(20.0)
            }),
            LifecycleState::Active
        );
    }

    #[test]
    fn long_silence_after_a_long_absence_is_dead() {
        let silent = Signals {
            days_since_engagement: f64::INFINITY,
            ..regular(731.0)
        };
        assert_eq!(state(silent), LifecycleState::Dead);
        assert_eq!(
            state(Signals {
                days_since_purchase: 730.0,
                ..silent
            }),
            LifecycleState::NearlyLost
        );
        // Still opening mail within 180 days: not dead.
        assert_eq!(
            state(Signals {
                days_since_engagement: 180.0,
                ..silent
            }),
            LifecycleState::NearlyLost
        );
        // Twenty unopened in a row and two cycles missed: dead before two years.
        let ignoring = Signals {
            days_since_engagement: 200.0,
            consecutive_unopened: 20,
            ..regular(61.0)
        };
        assert_eq!(state(ignoring), LifecycleState::Dead);
        assert_eq!(
            state(Signals {
                consecutive_unopened: 19,
                ..ignoring
            }),
            LifecycleState::NearlyLost
        );
    }

    #[test]
    fn a_customer_who_never_bought_is_a_prospect_and_reasons_are_words() {
        let prospect = Signals {
            purchase_days: 0,
            ..regular(0.0)
        };
        assert_eq!(state(prospect), LifecycleState::Prospect);
        let policy = LifecyclePolicy::default();
        let signals = regular(50.0);
        let lifecycle = policy.classify(&signals, 90.0);
        let reasons = policy.reasons(&signals, &lifecycle);
        assert!(
            reasons
                .iter()
                .any(|r| r == "overdue by 20 days (cycle 30 days +30 %)"),
            "{reasons:?}"
        );
    }

    #[test]
    fn niche_presets_put_sleeping_at_the_top_of_their_range() {
        assert!((Niche::Beauty.expected_cycle_days() * 1.3 - 90.0).abs() < 1e-9);
        assert!((Niche::Tattoo.expected_cycle_days() * 1.3 - 270.0).abs() < 1e-9);
    }
}
