//! The tenant's contact policy: the defaults from the domain notes, checking a policy a
//! tenant sends, and the policy in the units the rules work with.

use chrono::{Duration, NaiveTime};
use winback_platform::error::FieldViolation;
use winback_platform::time::{from_duration, to_duration};
use winback_proto::campaigns::ContactPolicy;

/// The policy in working units.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Policy {
    pub(crate) max_chains_per_window: i64,
    pub(crate) chain_window: Duration,
    pub(crate) cooldown_after_return: Duration,
    pub(crate) weekly_touch_cap: i64,
    pub(crate) quiet_start: NaiveTime,
    pub(crate) quiet_end: NaiveTime,
    pub(crate) default_time_zone: chrono_tz::Tz,
    pub(crate) attribution_window: Duration,
    pub(crate) max_step_lateness: Duration,
    pub(crate) max_steps: usize,
    pub(crate) max_chain_span: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_chains_per_window: 2,
            chain_window: Duration::days(365),
            cooldown_after_return: Duration::days(90),
            weekly_touch_cap: 3,
            quiet_start: NaiveTime::from_hms_opt(21, 0, 0).unwrap_or_default(),
            quiet_end: NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default(),
            default_time_zone: chrono_tz::UTC,
            attribution_window: Duration::days(30),
            max_step_lateness: Duration::hours(24),
            max_steps: 5,
            max_chain_span: Duration::days(30),
        }
    }
}

impl Policy {
    /// How long after enrolment a purchase still counts as a return, for the treated and the
    /// holdout alike (so their rates compare): the longest chain plus the attribution window.
    pub(crate) fn measurement_window(&self) -> Duration {
        self.max_chain_span + self.attribution_window
    }

    /// As the API shows it.
    pub(crate) fn to_proto(&self) -> ContactPolicy {
        ContactPolicy {
            max_chains_per_window: self.max_chains_per_window as i32,
            chain_window: Some(to_duration(self.chain_window)),
            cooldown_after_return: Some(to_duration(self.cooldown_after_return)),
            weekly_touch_cap: self.weekly_touch_cap as i32,
            quiet_hours_start: self.quiet_start.format("%H:%M").to_string(),
            quiet_hours_end: self.quiet_end.format("%H:%M").to_string(),
            default_time_zone: self.default_time_zone.name().to_owned(),
            attribution_window: Some(to_duration(self.attribution_window)),
            max_step_lateness: Some(to_duration(self.max_step_lateness)),
            max_steps: self.max_steps as i32,
            max_chain_span: Some(to_duration(self.max_chain_span)),
        }
    }

    /// A stored or requested policy; unset fields take the defaults. Every violation is
    /// named under `field` (e.g. `policy.weekly_touch_cap`).
    pub(crate) fn from_proto(p: &ContactPolicy, field: &str) -> Result<Self, Vec<FieldViolation>> {
        let d = Self::default();
        let mut errors = Vec::new();
        let mut bad = |name: &str, why: &str| {
            errors.push(FieldViolation::new(format!("{field}.{name}"), why));
        };
        let count = |v: i32, default: i64| if v == 0 { default } else { i64::from(v) };
        let span = |v: &Option<prost_types::Duration>, default: Duration| {
            v.as_ref().map_or(default, from_duration)
        };
        let policy = Self {
            max_chains_per_window: count(p.max_chains_per_window, d.max_chains_per_window),
            chain_window: span(&p.chain_window, d.chain_window),
            cooldown_after_return: span(&p.cooldown_after_return, d.cooldown_after_return),
            weekly_touch_cap: count(p.weekly_touch_cap, d.weekly_touch_cap),
            quiet_start: d.quiet_start,
            quiet_end: d.quiet_end,
            default_time_zone: d.default_time_zone,
            attribution_window: span(&p.attribution_window, d.attribution_window),
            max_step_lateness: span(&p.max_step_lateness, d.max_step_lateness),
            max_steps: count(p.max_steps, d.max_steps as i64).max(0) as usize,
            max_chain_span: span(&p.max_chain_span, d.max_chain_span),
        };
        let mut policy = policy;
        if !(1..=12).contains(&policy.max_chains_per_window) {
            bad("max_chains_per_window", "must be between 1 and 12");
        }
        if !(1..=50).contains(&policy.weekly_touch_cap) {
            bad("weekly_touch_cap", "must be between 1 and 50");
        }
        if !(1..=10).contains(&policy.max_steps) {
            bad("max_steps", "must be between 1 and 10");
        }
        for (name, value, low, high) in [
            ("chain_window", policy.chain_window, 1, 3 * 365),
            (
                "cooldown_after_return",
                policy.cooldown_after_return,
                0,
                3 * 365,
            ),
            ("attribution_window", policy.attribution_window, 1, 365),
            ("max_chain_span", policy.max_chain_span, 1, 365),
        ] {
            if value < Duration::days(low) || value > Duration::days(high) {
                bad(name, &format!("must be between {low} and {high} days"));
            }
        }
        if policy.max_step_lateness < Duration::zero()
            || policy.max_step_lateness > Duration::days(7)
        {
            bad("max_step_lateness", "must be between 0 and 7 days");
        }
        for (name, text, slot) in [
            (
                "quiet_hours_start",
                &p.quiet_hours_start,
                &mut policy.quiet_start,
            ),
            ("quiet_hours_end", &p.quiet_hours_end, &mut policy.quiet_end),
        ] {
            if text.is_empty() {
                continue;
            }
            match NaiveTime::parse_from_str(text, "%H:%M") {
                Ok(t) => *slot = t,
                Err(_) => bad(name, "must be a local time \"HH:MM\""),
            }
        }
        if !p.default_time_zone.is_empty() {
            match p.default_time_zone.parse::<chrono_tz::Tz>() {
                Ok(tz) => policy.default_time_zone = tz,
                Err(_) => bad("default_time_zone", "must be an IANA time zone name"),
            }
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_policy_is_the_defaults_of_the_domain_notes() {
        let p = Policy::from_proto(&ContactPolicy::default(), "policy").unwrap();
        assert_eq!(p, Policy::default());
        assert_eq!(p.max_chains_per_window, 2);
        assert_eq!(p.cooldown_after_return, Duration::days(90));
        assert_eq!(p.quiet_start.format("%H:%M").to_string(), "21:00");
        assert_eq!(Policy::from_proto(&p.to_proto(), "policy").unwrap(), p);
    }

    #[test]
    fn every_bad_field_is_named() {
        let err = Policy::from_proto(
            &ContactPolicy {
                weekly_touch_cap: -1,
                quiet_hours_start: "25:00".into(),
                default_time_zone: "Mars/Olympus".into(),
                ..ContactPolicy::default()
            },
            "policy",
        )
        .unwrap_err();
        let fields: Vec<&str> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "policy.weekly_touch_cap",
                "policy.quiet_hours_start",
                "policy.default_time_zone"
            ]
        );
    }
}
