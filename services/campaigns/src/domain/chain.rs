//! What makes a chain acceptable: 1–N steps, each with channels and templates, timings that
//! move forward and stay within the tenant's span, conditions that have something to look
//! at, and no reminder that arrives after the coupon it reminds of has expired.

use chrono::Duration;
use winback_platform::error::FieldViolation;
use winback_platform::time::from_duration;
use winback_proto::campaigns::{Chain, DelayFrom, Step, StepCondition};
use winback_proto::common::{Channel, MessagePurpose};

use super::policy::Policy;

/// When each step falls, counted from the enrolment (before quiet hours and caps).
pub(crate) fn offsets(steps: &[Step]) -> Vec<Duration> {
    let mut out: Vec<Duration> = Vec::with_capacity(steps.len());
    for s in steps {
        let delay = s.delay.as_ref().map_or_else(Duration::zero, from_duration);
        let previous = out.last().copied().unwrap_or_else(Duration::zero);
        out.push(match DelayFrom::try_from(s.delay_from) {
            Ok(DelayFrom::Enrolment) => delay,
            _ => previous + delay,
        });
    }
    out
}

/// Whether a step is marketing (capped) rather than a service message.
pub(crate) fn is_marketing(step: &Step) -> bool {
    MessagePurpose::try_from(step.purpose).unwrap_or_default() != MessagePurpose::Service
}

/// Checks `chain` against `policy`. `offer_validity` tells how long a coupon of an offer
/// template (or, for a ladder, its shortest rung) stays valid, when known.
pub(crate) fn violations(
    chain: &Chain,
    policy: &Policy,
    offer_validity: &dyn Fn(&Step) -> Option<Duration>,
) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    let mut bad = |field: String, why: String| out.push(FieldViolation::new(field, why));
    if chain.name.trim().is_empty() || chain.name.len() > 200 {
        bad(
            "chain.name".into(),
            "a name of 1–200 characters is required".into(),
        );
    }
    let n = chain.steps.len();
    if n == 0 || n > policy.max_steps {
        bad(
            "chain.steps".into(),
            format!(
                "a chain has 1–{} steps (more than five touches raise unsubscribes); this one has {n}",
                policy.max_steps
            ),
        );
    }
    let at = offsets(&chain.steps);
    for (i, step) in chain.steps.iter().enumerate() {
        let f = |name: &str| format!("chain.steps[{i}].{name}");
        if step.name.len() > 200 {
            bad(f("name"), "at most 200 characters".into());
        }
        if step
            .delay
            .as_ref()
            .is_some_and(|d| from_duration(d) < Duration::zero())
        {
            bad(f("delay"), "must not be negative".into());
        }
        if i > 0 && at[i] < at[i - 1] {
            bad(f("delay"), format!("falls before steps[{}]", i - 1));
        }
        if step.channels.is_empty() {
            bad(f("channels"), "at least one channel is required".into());
        }
        let mut seen = Vec::new();
        for (j, c) in step.channels.iter().enumerate() {
            match Channel::try_from(c.channel) {
                Ok(ch) if ch != Channel::Unspecified => {
                    if seen.contains(&ch) {
                        bad(
                            format!("chain.steps[{i}].channels[{j}].channel"),
                            "listed twice".into(),
                        );
                    }
                    seen.push(ch);
                }
                _ => bad(
                    format!("chain.steps[{i}].channels[{j}].channel"),
                    "a channel is required".into(),
                ),
            }
            if c.template_id.trim().is_empty() || c.template_id.len() > 200 {
                bad(
                    format!("chain.steps[{i}].channels[{j}].template_id"),
                    "a template id of 1–200 characters is required".into(),
                );
            }
        }
        if !step.offer_template_id.is_empty() && !step.offer_ladder_id.is_empty() {
            bad(
                f("offer_ladder_id"),
                "a step has an offer template or a ladder, not both".into(),
            );
        }
        let condition = StepCondition::try_from(step.condition);
        if condition.is_err() {
            bad(f("condition"), "unknown condition".into());
        } else if i == 0 && condition != Ok(StepCondition::Unspecified) {
            bad(
                f("condition"),
                "the first step has no earlier touch to look at".into(),
            );
        }
        if MessagePurpose::try_from(step.purpose).is_err() {
            bad(f("purpose"), "unknown purpose".into());
        }
        if let Some(d) = &step.suppress_if_no_click_within {
            let d = from_duration(d);
            if d <= Duration::zero() || d > Duration::days(30) {
                bad(
                    f("suppress_if_no_click_within"),
                    "must be between 1 second and 30 days".into(),
                );
            }
        }
        // A reminder (the next step, without an offer of its own) must come while the coupon
        // it reminds of is still valid.
        if let (Some(validity), Some(next)) = (offer_validity(step), chain.steps.get(i + 1))
            && next.offer_template_id.is_empty()
            && next.offer_ladder_id.is_empty()
            && at[i + 1] - at[i] >= validity
        {
            bad(
                format!("chain.steps[{}].delay", i + 1),
                format!(
                    "the reminder comes {} h after the offer of steps[{i}], which expires after {} h",
                    (at[i + 1] - at[i]).num_hours(),
                    validity.num_hours()
                ),
            );
        }
    }
    if let Some(last) = at.last()
        && *last > policy.max_chain_span
    {
        bad(
            format!("chain.steps[{}].delay", n - 1),
            format!(
                "the chain spans {} days, beyond the tenant's limit of {} days",
                last.num_days(),
                policy.max_chain_span.num_days()
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use winback_platform::time::to_duration;
    use winback_proto::campaigns::ChannelChoice;

    use super::*;

    fn step(days: i64, offer: &str) -> Step {
        Step {
            name: "s".into(),
            delay: Some(to_duration(Duration::days(days))),
            channels: vec![ChannelChoice {
                channel: Channel::Email as i32,
                template_id: "t".into(),
            }],
            offer_template_id: offer.into(),
            ..Step::default()
        }
    }

    fn chain(steps: Vec<Step>) -> Chain {
        Chain {
            name: "c".into(),
            steps,
            ..Chain::default()
        }
    }

    fn fields(c: &Chain, validity: &dyn Fn(&Step) -> Option<Duration>) -> Vec<String> {
        violations(c, &Policy::default(), validity)
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn the_classic_chain_passes() {
        let c = chain(vec![step(7, ""), step(3, ""), step(4, "o"), step(2, "")]);
        assert!(
            fields(&c, &|s| (!s.offer_template_id.is_empty())
                .then(|| Duration::hours(72)))
            .is_empty()
        );
    }

    #[test]
    fn a_sixth_touch_is_refused() {
        let c = chain((0..6).map(|_| step(1, "")).collect());
        assert_eq!(fields(&c, &|_| None), ["chain.steps"]);
    }

    #[test]
    fn a_reminder_after_its_coupon_expired_is_refused() {
        let c = chain(vec![step(1, "o"), step(4, "")]);
        let validity = |s: &Step| (!s.offer_template_id.is_empty()).then(|| Duration::hours(72));
        assert_eq!(fields(&c, &validity), ["chain.steps[1].delay"]);
    }

    #[test]
    fn a_span_beyond_the_limit_is_refused_and_names_the_last_step() {
        let c = chain(vec![step(20, ""), step(11, "")]);
        assert_eq!(fields(&c, &|_| None), ["chain.steps[1].delay"]);
    }

    #[test]
    fn offsets_count_from_the_previous_step_or_the_enrolment() {
        let mut s = vec![step(7, ""), step(3, ""), step(12, "")];
        s[2].delay_from = DelayFrom::Enrolment as i32;
        assert_eq!(
            offsets(&s),
            [Duration::days(7), Duration::days(10), Duration::days(12)]
        );
    }
}
