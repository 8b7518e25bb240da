//! The ready-made chains of the domain notes. Template ids are the presets' default keys
//! (a tenant creates delivery templates under these keys, or edits the chain). Offers are
//! left to the tenant: the steps meant for one say so in their name.

use chrono::Duration;
use winback_platform::time::to_duration;
use winback_proto::campaigns::{Chain, ChainPreset, ChannelChoice, Step, StepCondition};
use winback_proto::common::{Channel, MessagePurpose};

fn choice(channel: Channel, template: &str) -> ChannelChoice {
    ChannelChoice {
        channel: channel as i32,
        template_id: template.to_owned(),
    }
}

/// Email first, then push, then SMS: multichannel returns 20–35 % more than one channel.
fn everywhere(template: &str) -> Vec<ChannelChoice> {
    vec![
        choice(Channel::Email, template),
        choice(Channel::Push, template),
        choice(Channel::Sms, template),
    ]
}

fn step(name: &str, after: Duration, channels: Vec<ChannelChoice>) -> Step {
    Step {
        name: name.to_owned(),
        delay: Some(to_duration(after)),
        channels,
        ..Step::default()
    }
}

fn preset(key: &str, description: &str, steps: Vec<Step>) -> ChainPreset {
    ChainPreset {
        key: key.to_owned(),
        description: description.to_owned(),
        chain: Some(Chain {
            chain_id: String::new(),
            name: key.replace('_', " "),
            steps,
            preset: key.to_owned(),
        }),
    }
}

/// Every preset, in a stable order.
pub(crate) fn all() -> Vec<ChainPreset> {
    let d = Duration::days;
    let h = Duration::hours;
    vec![
        preset(
            "classic_four_touch",
            "Reminder → value → limited offer (48–72 h) → final push \"24 hours left\"; attach an offer to step 3.",
            vec![
                step("reminder", d(7), everywhere("winback_reminder")),
                step("value", d(3), everywhere("winback_value")),
                step("limited_offer", d(4), everywhere("winback_limited_offer")),
                step("final_push", h(48), everywhere("winback_last_chance")),
            ],
        ),
        preset(
            "five_touch_survey",
            "Day 1 long time no see + top picks; day 4 useful content; day 7 personal offer; day 10 15 % last chance; day 14 survey \"why did you stop?\" with a code for the answer.",
            vec![
                step("long_time_no_see", d(1), everywhere("winback_missed_you")),
                step("useful_content", d(3), everywhere("winback_content")),
                step("personal_offer", d(3), everywhere("winback_personal_offer")),
                step(
                    "last_chance_discount",
                    d(3),
                    everywhere("winback_last_chance"),
                ),
                step("survey", d(4), everywhere("winback_survey")),
            ],
        ),
        preset(
            "dead_cleanup",
            "One \"are we breaking up?\" message; no click within 7 days suppresses the customer for marketing.",
            vec![Step {
                suppress_if_no_click_within: Some(to_duration(d(7))),
                ..step("breaking_up", d(0), everywhere("winback_breaking_up"))
            }],
        ),
        preset(
            "abandoned_cart",
            "Message 1 hour after the cart was left, then a call task for a manager at 24 hours if nothing was bought.",
            vec![
                step("cart_reminder", h(1), everywhere("cart_reminder")),
                Step {
                    purpose: MessagePurpose::Service as i32,
                    condition: StepCondition::IfNotClicked as i32,
                    ..step(
                        "manager_call",
                        h(23),
                        vec![choice(Channel::ManagerTask, "manager_call_task")],
                    )
                },
            ],
        ),
        preset(
            "product_viewed",
            "\"It is still waiting for you\" after repeated views of one product.",
            vec![step(
                "still_waiting",
                h(2),
                everywhere("product_still_waiting"),
            )],
        ),
        preset(
            "missed_cycle",
            "\"You usually order about now\" when a customer misses their own purchase cycle.",
            vec![step("usual_time", d(0), everywhere("missed_cycle"))],
        ),
        preset(
            "bonus_expiry",
            "Points about to expire: a reminder now and one 3 days before they go.",
            vec![
                step("points_waiting", d(0), everywhere("bonus_expiring")),
                Step {
                    condition: StepCondition::IfNotOpened as i32,
                    ..step(
                        "points_last_days",
                        d(4),
                        everywhere("bonus_expiring_last_days"),
                    )
                },
            ],
        ),
        preset(
            "deep_sleep",
            "One gentle touch a month for customers who did not react to a chain.",
            vec![step(
                "monthly_touch",
                d(0),
                everywhere("deep_sleep_monthly"),
            )],
        ),
    ]
}

/// The preset called `key`.
pub(crate) fn find(key: &str) -> Option<ChainPreset> {
    all().into_iter().find(|p| p.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::chain::violations;
    use crate::domain::policy::Policy;

    #[test]
    fn every_preset_passes_the_default_policy() {
        for p in all() {
            let chain = p.chain.unwrap();
            let v = violations(&chain, &Policy::default(), &|_| None);
            assert!(v.is_empty(), "{}: {v:?}", p.key);
        }
    }

    #[test]
    fn the_keys_are_the_documented_ones() {
        let keys: Vec<String> = all().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "classic_four_touch",
                "five_touch_survey",
                "dead_cleanup",
                "abandoned_cart",
                "product_viewed",
                "missed_cycle",
                "bonus_expiry",
                "deep_sleep"
            ]
        );
    }
}
