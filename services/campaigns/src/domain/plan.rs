//! What a due step does, decided from what campaigns knows: stale or not, its condition on
//! the earlier touches, the first channel with consent and a contact, quiet hours in the
//! customer's zone, and the weekly cap. The worker carries the decision out.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use winback_proto::campaigns::{Step, StepCondition};
use winback_proto::common::{Channel, MessagePurpose};

use super::chain::is_marketing;
use super::policy::Policy;
use super::quiet::QuietHours;

/// Consent bits of one channel and purpose, as kept on an enrolment.
pub(crate) fn consent_bit(channel: Channel, purpose: MessagePurpose) -> i64 {
    let service = i64::from(purpose == MessagePurpose::Service);
    1 << ((channel as i64) * 2 + service)
}

/// How to reach a customer, as known to campaigns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reach {
    pub(crate) email: String,
    pub(crate) phone: String,
    pub(crate) push_token: String,
    pub(crate) time_zone: String,
    pub(crate) consent_bits: i64,
}

impl Reach {
    /// The contact for `channel`, when one is known. The messenger webhook addresses the
    /// customer by id; a manager task goes to staff, about the customer.
    pub(crate) fn contact(&self, channel: Channel) -> Option<&str> {
        let c = match channel {
            Channel::Email => self.email.as_str(),
            Channel::Sms => self.phone.as_str(),
            Channel::Push => self.push_token.as_str(),
            Channel::Messenger | Channel::ManagerTask => "customer",
            Channel::Unspecified => "",
        };
        (!c.is_empty()).then_some(c)
    }

    /// Whether the customer allows `purpose` messages on `channel` (a manager task is staff
    /// work and needs none).
    pub(crate) fn allows(&self, channel: Channel, purpose: MessagePurpose) -> bool {
        channel == Channel::ManagerTask || self.consent_bits & consent_bit(channel, purpose) != 0
    }

    /// The customer's zone, else the policy's.
    pub(crate) fn zone(&self, policy: &Policy) -> Tz {
        self.time_zone.parse().unwrap_or(policy.default_time_zone)
    }
}

/// What the step can see of its enrolment.
#[derive(Debug, Clone)]
pub(crate) struct StepView<'a> {
    pub(crate) step: &'a Step,
    pub(crate) now: DateTime<Utc>,
    /// When it is scheduled now (after any deferral).
    pub(crate) due_at: DateTime<Utc>,
    /// When it was first due (before any deferral).
    pub(crate) first_due_at: DateTime<Utc>,
    pub(crate) reach: &'a Reach,
    pub(crate) opened: bool,
    pub(crate) clicked: bool,
    /// Expiry of the coupon the previous step issued, if it issued one.
    pub(crate) previous_coupon_expires_at: Option<DateTime<Utc>>,
    /// This customer's marketing touches in the last 7 days, oldest first.
    pub(crate) recent_touches: &'a [DateTime<Utc>],
}

/// What to do with a due step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Send on the first of these channels delivery accepts (falling back on suppression).
    Send(Vec<(Channel, String)>),
    /// Try again at `until`; recorded as `outcome` meanwhile.
    Defer {
        outcome: &'static str,
        until: DateTime<Utc>,
    },
    /// Record `outcome` and move on.
    Skip(&'static str),
}

/// Decides `v` under `policy`.
pub(crate) fn decide(v: &StepView<'_>, policy: &Policy) -> Decision {
    if v.now - v.due_at > policy.max_step_lateness {
        return Decision::Skip("skipped_stale");
    }
    // A reminder of the previous step's coupon is pointless once the coupon is gone.
    let own_offer = !v.step.offer_template_id.is_empty() || !v.step.offer_ladder_id.is_empty();
    if !own_offer && v.previous_coupon_expires_at.is_some_and(|e| e <= v.now) {
        return Decision::Skip("skipped_stale");
    }
    let condition_holds = match StepCondition::try_from(v.step.condition) {
        Ok(StepCondition::IfNotOpened) => !v.opened,
        // Still running means nothing was bought.
        Ok(StepCondition::IfOpenedNotBought) => v.opened,
        Ok(StepCondition::IfNotClicked) => !v.clicked,
        _ => true,
    };
    if !condition_holds {
        return Decision::Skip("skipped_condition");
    }
    let purpose = match MessagePurpose::try_from(v.step.purpose) {
        Ok(MessagePurpose::Service) => MessagePurpose::Service,
        _ => MessagePurpose::Advertising,
    };
    let channels: Vec<(Channel, String)> = v
        .step
        .channels
        .iter()
        .filter_map(|c| {
            let channel = Channel::try_from(c.channel).ok()?;
            (v.reach.contact(channel).is_some() && v.reach.allows(channel, purpose))
                .then(|| (channel, c.template_id.clone()))
        })
        .collect();
    let Some((first, _)) = channels.first() else {
        return Decision::Skip("skipped_no_consent");
    };
    if *first != Channel::ManagerTask {
        let quiet = QuietHours {
            start: policy.quiet_start,
            end: policy.quiet_end,
        };
        if let Some(until) = quiet.next_allowed(v.now, v.reach.zone(policy)) {
            return Decision::Defer {
                outcome: "deferred_quiet_hours",
                until,
            };
        }
    }
    if is_marketing(v.step) {
        let cap = policy.weekly_touch_cap.max(0) as usize;
        let week_ago = v.now - Duration::days(7);
        let recent: Vec<&DateTime<Utc>> =
            v.recent_touches.iter().filter(|t| **t > week_ago).collect();
        if recent.len() >= cap {
            // The window frees when the oldest touch that keeps it full turns a week old.
            let frees = recent
                .get(recent.len() - cap)
                .map_or(v.now, |t| **t + Duration::days(7));
            return if frees - v.first_due_at <= policy.max_step_lateness {
                Decision::Defer {
                    outcome: "deferred_cap",
                    until: frees,
                }
            } else {
                Decision::Skip("skipped_cap")
            };
        }
    }
    Decision::Send(channels)
}

#[cfg(test)]
mod tests {
    use winback_proto::campaigns::ChannelChoice;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn reach() -> Reach {
        Reach {
            email: "a@example.com".into(),
            phone: "+79161234567".into(),
            push_token: String::new(),
            time_zone: "Europe/Moscow".into(),
            consent_bits: consent_bit(Channel::Email, MessagePurpose::Advertising)
                | consent_bit(Channel::Sms, MessagePurpose::Advertising),
        }
    }

    fn step() -> Step {
        Step {
            channels: [Channel::Push, Channel::Email, Channel::Sms]
                .iter()
                .map(|c| ChannelChoice {
                    channel: *c as i32,
                    template_id: "t".into(),
                })
                .collect(),
            ..Step::default()
        }
    }

    fn view<'a>(
        step: &'a Step,
        reach: &'a Reach,
        now: &str,
        touches: &'a [DateTime<Utc>],
    ) -> StepView<'a> {
        StepView {
            step,
            now: utc(now),
            due_at: utc(now),
            first_due_at: utc(now),
            reach,
            opened: false,
            clicked: false,
            previous_coupon_expires_at: None,
            recent_touches: touches,
        }
    }

    #[test]
    fn the_first_channel_with_consent_and_contact_is_chosen_with_fallbacks() {
        let (s, r) = (step(), reach());
        // 12:00 Moscow.
        let d = decide(
            &view(&s, &r, "2026-03-10T09:00:00Z", &[]),
            &Policy::default(),
        );
        assert_eq!(
            d,
            Decision::Send(vec![
                (Channel::Email, "t".into()),
                (Channel::Sms, "t".into())
            ])
        );
    }

    #[test]
    fn no_consent_anywhere_skips() {
        let s = step();
        let r = Reach {
            consent_bits: 0,
            ..reach()
        };
        let d = decide(
            &view(&s, &r, "2026-03-10T09:00:00Z", &[]),
            &Policy::default(),
        );
        assert_eq!(d, Decision::Skip("skipped_no_consent"));
    }

    #[test]
    fn night_in_the_customers_zone_waits_for_the_morning() {
        let (s, r) = (step(), reach());
        // 21:00 Moscow.
        let d = decide(
            &view(&s, &r, "2026-03-10T18:00:00Z", &[]),
            &Policy::default(),
        );
        assert_eq!(
            d,
            Decision::Defer {
                outcome: "deferred_quiet_hours",
                until: utc("2026-03-11T06:00:00Z")
            }
        );
    }

    #[test]
    fn the_weekly_cap_defers_to_the_moment_the_window_frees_or_skips_when_too_late() {
        let (s, r) = (step(), reach());
        let policy = Policy {
            weekly_touch_cap: 2,
            ..Policy::default()
        };
        let touches = [utc("2026-03-04T10:00:00Z"), utc("2026-03-09T10:00:00Z")];
        // Two touches within the week: the oldest turns a week old on 03-11 10:00, 25 h
        // after the due time — beyond the 24 h lateness: skipped.
        let d = decide(&view(&s, &r, "2026-03-10T09:00:00Z", &touches), &policy);
        assert_eq!(d, Decision::Skip("skipped_cap"));
        // At 11:00 the window frees 23 h later: deferred.
        let d = decide(&view(&s, &r, "2026-03-10T11:00:00Z", &touches), &policy);
        assert_eq!(
            d,
            Decision::Defer {
                outcome: "deferred_cap",
                until: utc("2026-03-11T10:00:00Z")
            }
        );
        // Exactly a week after the oldest touch it no longer counts.
        let d = decide(&view(&s, &r, "2026-03-11T10:00:00Z", &touches), &policy);
        assert!(matches!(d, Decision::Send(_)), "{d:?}");
    }

    #[test]
    fn service_messages_are_never_capped() {
        let mut s = step();
        s.purpose = MessagePurpose::Service as i32;
        let r = Reach {
            consent_bits: consent_bit(Channel::Email, MessagePurpose::Service),
            ..reach()
        };
        let touches = [utc("2026-03-09T10:00:00Z"); 5];
        let d = decide(
            &view(&s, &r, "2026-03-10T09:00:00Z", &touches),
            &Policy::default(),
        );
        assert!(matches!(d, Decision::Send(_)), "{d:?}");
    }

    #[test]
    fn a_step_later_than_the_lateness_is_stale_and_so_is_a_reminder_of_a_dead_coupon() {
        let (s, r) = (step(), reach());
        let mut v = view(&s, &r, "2026-03-10T09:00:00Z", &[]);
        v.due_at = utc("2026-03-09T08:59:59Z");
        assert_eq!(
            decide(&v, &Policy::default()),
            Decision::Skip("skipped_stale")
        );
        v.due_at = utc("2026-03-09T09:00:00Z");
        assert!(matches!(decide(&v, &Policy::default()), Decision::Send(_)));
        v.previous_coupon_expires_at = Some(utc("2026-03-10T09:00:00Z"));
        assert_eq!(
            decide(&v, &Policy::default()),
            Decision::Skip("skipped_stale")
        );
    }

    #[test]
    fn conditions_look_at_the_earlier_touches() {
        let (mut s, r) = (step(), reach());
        s.condition = StepCondition::IfNotOpened as i32;
        let mut v = view(&s, &r, "2026-03-10T09:00:00Z", &[]);
        v.opened = true;
        assert_eq!(
            decide(&v, &Policy::default()),
            Decision::Skip("skipped_condition")
        );
    }
}
