//! The tenant's segmentation policy: defaults, validation, and the scoring library's view
//! of it. A stored policy always has every default filled in, so what `GetPolicy` shows is
//! what the recompute uses.

use prost_types::Duration;
use winback_platform::ServiceError;
use winback_platform::error::FieldViolation;
use winback_proto::segmentation::{
    FrequencyScoring, MonetaryBasis, NichePreset, Policy, ScoreRange as ProtoRange, ScoringModel,
    SegmentRule as ProtoRule, SegmentRuleTable,
};
use winback_scoring::lifecycle::{LifecyclePolicy, Niche};
use winback_scoring::score::{self, PROSPECT_SEGMENT_KEY, ScoringPolicy};
use winback_scoring::segments::{RuleTable, ScoreRange, SegmentLookup, SegmentRule, TableReport};

const DAY_SECONDS: i64 = 86_400;

fn days(n: i64) -> Option<Duration> {
    Some(Duration {
        seconds: n * DAY_SECONDS,
        nanos: 0,
    })
}

fn in_days(d: &Duration) -> f64 {
    (d.seconds as f64 + f64::from(d.nanos) * 1e-9) / DAY_SECONDS as f64
}

fn is_unset(d: &Option<Duration>) -> bool {
    d.as_ref().is_none_or(|d| d.seconds == 0 && d.nanos == 0)
}

/// The policy every tenant starts with.
pub(crate) fn default_policy() -> Policy {
    Policy {
        niche: NichePreset::Unspecified as i32,
        typical_interval: None,
        sleeping_overdue_ratio: 0.30,
        nearly_lost_cycles: 2.0,
        dead_no_open: days(180),
        dead_no_purchase: days(730),
        hot_activity_window: days(30),
        rule_table: Some(table_to_proto(&RuleTable::default_grid())),
        recompute_every: None,
        time_unit: days(1),
        clv_horizon: days(365),
        annual_discount_rate: 0.10,
        monetary_basis: MonetaryBasis::Total as i32,
        unopened_streak_dead: 20,
        scoring_model: ScoringModel::Unspecified as i32,
        frequency_scoring: FrequencyScoring::PurchaseDays as i32,
        frequency_thresholds: score::DEFAULT_FREQUENCY_THRESHOLDS
            .iter()
            .map(|&t| t as i32)
            .collect(),
    }
}

/// Fills unset fields with defaults and checks the rest; every problem names its field.
pub(crate) fn normalize(policy: Policy) -> Result<Policy, ServiceError> {
    let defaults = default_policy();
    let mut p = policy;
    let mut violations = Vec::new();
    let mut check = |ok: bool, field: &str, description: &str| {
        if !ok {
            violations.push(FieldViolation::new(format!("policy.{field}"), description));
        }
    };
    check(
        NichePreset::try_from(p.niche).is_ok(),
        "niche",
        "unknown niche preset",
    );
    check(
        MonetaryBasis::try_from(p.monetary_basis).is_ok(),
        "monetary_basis",
        "unknown monetary basis",
    );
    if p.monetary_basis == MonetaryBasis::Unspecified as i32 {
        p.monetary_basis = MonetaryBasis::Total as i32;
    }
    check(
        ScoringModel::try_from(p.scoring_model).is_ok(),
        "scoring_model",
        "unknown scoring model",
    );
    check(
        FrequencyScoring::try_from(p.frequency_scoring).is_ok(),
        "frequency_scoring",
        "unknown frequency scoring",
    );
    if p.frequency_scoring == FrequencyScoring::Unspecified as i32 {
        p.frequency_scoring = FrequencyScoring::PurchaseDays as i32;
    }
    if p.frequency_thresholds.is_empty() {
        p.frequency_thresholds
            .clone_from(&defaults.frequency_thresholds);
    }
    check(
        p.frequency_thresholds.len() == 4
            && p.frequency_thresholds[0] >= 2
            && p.frequency_thresholds.windows(2).all(|w| w[0] < w[1]),
        "frequency_thresholds",
        "must be four strictly ascending purchase-day counts, the first at least 2",
    );
    if p.sleeping_overdue_ratio == 0.0 {
        p.sleeping_overdue_ratio = defaults.sleeping_overdue_ratio;
    }
    if p.nearly_lost_cycles == 0.0 {
        p.nearly_lost_cycles = defaults.nearly_lost_cycles;
    }
    if p.annual_discount_rate == 0.0 {
        p.annual_discount_rate = defaults.annual_discount_rate;
    }
    if p.unopened_streak_dead == 0 {
        p.unopened_streak_dead = defaults.unopened_streak_dead;
    }
    check(
        p.sleeping_overdue_ratio.is_finite()
            && p.sleeping_overdue_ratio > 0.0
            && p.sleeping_overdue_ratio <= 10.0,
        "sleeping_overdue_ratio",
        "must be above 0 and at most 10",
    );
    check(
        p.nearly_lost_cycles.is_finite()
            && p.nearly_lost_cycles > 1.0 + p.sleeping_overdue_ratio.max(0.0)
            && p.nearly_lost_cycles <= 20.0,
        "nearly_lost_cycles",
        "must be above 1 + sleeping_overdue_ratio (nearly lost comes after sleeping) and at most 20",
    );
    check(
        p.annual_discount_rate.is_finite()
            && p.annual_discount_rate > 0.0
            && p.annual_discount_rate < 10.0,
        "annual_discount_rate",
        "must be above 0 and below 10",
    );
    check(
        p.unopened_streak_dead > 0,
        "unopened_streak_dead",
        "must not be negative",
    );
    for (field, value, default, max_days) in [
        (
            "dead_no_open",
            &mut p.dead_no_open,
            &defaults.dead_no_open,
            3650.0,
        ),
        (
            "dead_no_purchase",
            &mut p.dead_no_purchase,
            &defaults.dead_no_purchase,
            3650.0,
        ),
        (
            "hot_activity_window",
            &mut p.hot_activity_window,
            &defaults.hot_activity_window,
            365.0,
        ),
        ("time_unit", &mut p.time_unit, &defaults.time_unit, 365.0),
        (
            "clv_horizon",
            &mut p.clv_horizon,
            &defaults.clv_horizon,
            3650.0,
        ),
    ] {
        if is_unset(value) {
            value.clone_from(default);
        }
        let d = value.as_ref().map_or(0.0, in_days);
        check(
            d > 0.0 && d <= max_days,
            field,
            &format!("must be above 0 and at most {max_days} days"),
        );
    }
    if is_unset(&p.typical_interval) {
        p.typical_interval = None;
    } else {
        let d = p.typical_interval.as_ref().map_or(0.0, in_days);
        check(
            (1.0..=3650.0).contains(&d),
            "typical_interval",
            "must be between 1 and 3650 days",
        );
    }
    if is_unset(&p.recompute_every) {
        p.recompute_every = None;
    } else {
        let seconds = p.recompute_every.as_ref().map_or(0, |d| d.seconds);
        check(
            seconds >= 60,
            "recompute_every",
            "must be at least one minute (or unset for on demand)",
        );
    }
    match &p.rule_table {
        None => p.rule_table = defaults.rule_table,
        Some(table) if table.rules.is_empty() => p.rule_table = defaults.rule_table,
        Some(table) => {
            if let Err(more) = table_from_proto(table, "policy.rule_table")
                .and_then(|t| compile(&t, "policy.rule_table"))
            {
                violations.extend(more);
            }
        }
    }
    if violations.is_empty() {
        Ok(p)
    } else {
        Err(ServiceError::InvalidArgument(violations))
    }
}

/// The rule table of a request, with malformed fields named.
pub(crate) fn table_from_proto(
    table: &SegmentRuleTable,
    field: &str,
) -> Result<RuleTable, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let range = |r: &Option<ProtoRange>, path: String, violations: &mut Vec<FieldViolation>| match r
    {
        Some(r) if (1..=5).contains(&r.min) && (1..=5).contains(&r.max) && r.min <= r.max => {
            Some(ScoreRange::new(r.min as u8, r.max as u8))
        }
        Some(_) => {
            violations.push(FieldViolation::new(
                path,
                "scores run 1–5 with min not above max",
            ));
            None
        }
        None => None,
    };
    let mut rules = Vec::with_capacity(table.rules.len());
    for (i, rule) in table.rules.iter().enumerate() {
        let at = format!("{field}.rules[{i}]");
        let key = rule.segment.trim();
        if key.is_empty() || key.len() > 64 {
            violations.push(FieldViolation::new(
                format!("{at}.segment"),
                "a segment key of 1–64 characters is required",
            ));
        } else if key == PROSPECT_SEGMENT_KEY {
            violations.push(FieldViolation::new(
                format!("{at}.segment"),
                "\"prospects\" is reserved for customers who never bought",
            ));
        }
        let recency = range(&rule.recency, format!("{at}.recency"), &mut violations)
            .unwrap_or(ScoreRange::ANY);
        let frequency = range(&rule.frequency, format!("{at}.frequency"), &mut violations)
            .unwrap_or(ScoreRange::ANY);
        let monetary = range(&rule.monetary, format!("{at}.monetary"), &mut violations);
        if rule.recency.is_none() {
            violations.push(FieldViolation::new(
                format!("{at}.recency"),
                "a recency range is required",
            ));
        }
        if rule.frequency.is_none() {
            violations.push(FieldViolation::new(
                format!("{at}.frequency"),
                "a frequency range is required",
            ));
        }
        rules.push(SegmentRule {
            segment: key.to_owned(),
            names: rule
                .names
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            recency,
            frequency,
            monetary,
        });
    }
    let fallback = Some(table.fallback_segment.trim().to_owned()).filter(|f| !f.is_empty());
    if violations.is_empty() {
        Ok(RuleTable { rules, fallback })
    } else {
        Err(violations)
    }
}

/// Compiles a table; cells no rule covers are an error (every customer needs a segment),
/// rules that can never match are not (`ValidateRuleTable` reports them).
pub(crate) fn compile(
    table: &RuleTable,
    field: &str,
) -> Result<SegmentLookup, Vec<FieldViolation>> {
    table.compile().map_err(|report: TableReport| {
        let mut violations: Vec<FieldViolation> = report
            .malformed_rules
            .iter()
            .map(|(i, range)| {
                FieldViolation::new(format!("{field}.rules[{i}].{range}"), "scores run 1–5")
            })
            .collect();
        if !report.uncovered_cells.is_empty() {
            let cells: Vec<String> = report
                .uncovered_cells
                .iter()
                .take(10)
                .map(|c| {
                    if c.monetary == 0 {
                        format!("R{}F{}", c.recency, c.frequency)
                    } else {
                        format!("R{}F{}M{}", c.recency, c.frequency, c.monetary)
                    }
                })
                .collect();
            violations.push(FieldViolation::new(
                field.to_owned(),
                format!(
                    "{} score cells no rule covers (e.g. {}); add rules or a fallback_segment",
                    report.uncovered_cells.len(),
                    cells.join(", ")
                ),
            ));
        }
        violations
    })
}

/// A rule table as the API shows it.
pub(crate) fn table_to_proto(table: &RuleTable) -> SegmentRuleTable {
    let range = |r: ScoreRange| ProtoRange {
        min: i32::from(r.min),
        max: i32::from(r.max),
    };
    SegmentRuleTable {
        rules: table
            .rules
            .iter()
            .map(|rule| ProtoRule {
                segment: rule.segment.clone(),
                names: rule
                    .names
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                recency: Some(range(rule.recency)),
                frequency: Some(range(rule.frequency)),
                monetary: rule.monetary.map(range),
            })
            .collect(),
        fallback_segment: table.fallback.clone().unwrap_or_default(),
    }
}

/// A stored (normalized) policy, ready for scoring.
#[derive(Debug, Clone)]
pub(crate) struct Effective {
    pub(crate) scoring: ScoringPolicy,
    pub(crate) lookup: SegmentLookup,
}

impl Effective {
    /// The scoring view of a normalized policy.
    pub(crate) fn new(policy: Policy) -> Result<Self, ServiceError> {
        let table = policy.rule_table.as_ref().map_or_else(
            || Ok(RuleTable::default_grid()),
            |t| table_from_proto(t, "policy.rule_table"),
        );
        let lookup = table
            .and_then(|t| compile(&t, "policy.rule_table"))
            .map_err(ServiceError::InvalidArgument)?;
        let d = |v: &Option<Duration>, default: f64| v.as_ref().map_or(default, in_days);
        let niche = match NichePreset::try_from(policy.niche).unwrap_or(NichePreset::Unspecified) {
            NichePreset::Unspecified => None,
            NichePreset::Tattoo => Some(Niche::Tattoo),
            NichePreset::Beauty => Some(Niche::Beauty),
            NichePreset::Cafe => Some(Niche::Cafe),
            NichePreset::WebShop => Some(Niche::WebShop),
            NichePreset::Retail => Some(Niche::Retail),
            NichePreset::Subscription => Some(Niche::Subscription),
        };
        let tenant_cycle_days = policy
            .typical_interval
            .as_ref()
            .map(in_days)
            .or_else(|| niche.map(Niche::expected_cycle_days));
        let scoring = ScoringPolicy {
            lifecycle: LifecyclePolicy {
                sleeping_overdue_ratio: policy.sleeping_overdue_ratio,
                nearly_lost_cycles: policy.nearly_lost_cycles,
                min_own_intervals: 2,
                dead_no_engagement_days: d(&policy.dead_no_open, 180.0),
                dead_no_purchase_days: d(&policy.dead_no_purchase, 730.0),
                hot_activity_window_days: d(&policy.hot_activity_window, 30.0),
                unopened_streak_dead: policy.unopened_streak_dead.max(1) as u32,
            },
            tenant_cycle_days,
            monetary: match MonetaryBasis::try_from(policy.monetary_basis) {
                Ok(MonetaryBasis::Average) => score::MonetaryBasis::Average,
                _ => score::MonetaryBasis::Total,
            },
            time_unit_days: d(&policy.time_unit, 1.0),
            clv_horizon_days: d(&policy.clv_horizon, 365.0),
            annual_discount_rate: policy.annual_discount_rate,
            model: match ScoringModel::try_from(policy.scoring_model) {
                Ok(ScoringModel::BgNbd) => score::ModelChoice::BgNbd,
                Ok(ScoringModel::MbgNbd) => score::ModelChoice::MbgNbd,
                _ => score::ModelChoice::Auto,
            },
            frequency: match FrequencyScoring::try_from(policy.frequency_scoring) {
                Ok(FrequencyScoring::Quintiles) => score::FrequencyRule::Quintiles,
                _ => score::FrequencyRule::PurchaseDays(
                    <[i32; 4]>::try_from(policy.frequency_thresholds.as_slice())
                        .map(|t| t.map(|v| v.max(0) as u32))
                        .unwrap_or(score::DEFAULT_FREQUENCY_THRESHOLDS),
                ),
            },
        };
        Ok(Self { scoring, lookup })
    }

    /// The display name of a segment key.
    pub(crate) fn segment_name(&self, key: &str, locale: &str) -> String {
        if key == PROSPECT_SEGMENT_KEY {
            return if locale.starts_with("ru") {
                "Без покупок"
            } else {
                "Prospects"
            }
            .to_owned();
        }
        self.lookup
            .segments()
            .iter()
            .position(|s| s == key)
            .map_or_else(
                || key.to_owned(),
                |i| self.lookup.name(i as u16, locale).to_owned(),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_defaults_and_the_default_table_is_the_grid() {
        let p = normalize(Policy::default()).unwrap();
        assert_eq!(p, default_policy());
        let e = Effective::new(p).unwrap();
        assert_eq!(e.lookup.segments().len(), 10);
        assert_eq!(e.segment_name("at_risk", "ru"), "В зоне риска");
        assert_eq!(e.segment_name("prospects", "en"), "Prospects");
    }

    #[test]
    fn bad_fields_are_named() {
        let policy = Policy {
            sleeping_overdue_ratio: -1.0,
            nearly_lost_cycles: 0.5,
            time_unit: Some(Duration {
                seconds: -5,
                nanos: 0,
            }),
            recompute_every: Some(Duration {
                seconds: 5,
                nanos: 0,
            }),
            rule_table: Some(SegmentRuleTable {
                rules: vec![ProtoRule {
                    segment: "a".into(),
                    recency: Some(ProtoRange { min: 0, max: 5 }),
                    frequency: Some(ProtoRange { min: 1, max: 5 }),
                    ..Default::default()
                }],
                fallback_segment: String::new(),
            }),
            ..Policy::default()
        };
        let Err(ServiceError::InvalidArgument(violations)) = normalize(policy) else {
            panic!("accepted")
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        for expected in [
            "policy.sleeping_overdue_ratio",
            "policy.nearly_lost_cycles",
            "policy.time_unit",
            "policy.recompute_every",
            "policy.rule_table.rules[0].recency",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn a_table_with_gaps_needs_a_fallback() {
        let mut table = table_to_proto(&RuleTable::default_grid());
        table.rules.pop();
        let policy = Policy {
            rule_table: Some(table.clone()),
            ..Policy::default()
        };
        let Err(ServiceError::InvalidArgument(v)) = normalize(policy) else {
            panic!("accepted")
        };
        assert_eq!(v[0].field, "policy.rule_table");
        assert!(v[0].description.contains("R1F1"), "{}", v[0].description);
        table.fallback_segment = "other".into();
        assert!(
            normalize(Policy {
                rule_table: Some(table),
                ..Policy::default()
            })
            .is_ok()
        );
    }
}
