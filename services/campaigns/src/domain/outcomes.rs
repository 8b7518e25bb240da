//! The words campaigns stores for step outcomes, end reasons and after-chain states, and
//! the proto enums the API and the events carry: one table each, so what is documented
//! and what is emitted cannot drift apart.

use winback_proto::common::{AfterChainState, EndReason, StepResult};

/// Stored step outcomes and their enum values.
pub(crate) const STEP_RESULTS: &[(&str, StepResult)] = &[
    ("pending", StepResult::Pending),
    ("sent", StepResult::Sent),
    ("deferred_quiet_hours", StepResult::DeferredQuietHours),
    ("deferred_cap", StepResult::DeferredCap),
    ("skipped_cap", StepResult::SkippedCap),
    ("skipped_no_consent", StepResult::SkippedNoConsent),
    ("skipped_condition", StepResult::SkippedCondition),
    ("skipped_stale", StepResult::SkippedStale),
    ("skipped_no_offer", StepResult::SkippedNoOffer),
    ("failed", StepResult::Failed),
    ("finished", StepResult::Finished),
];

/// Stored end reasons and their enum values.
pub(crate) const END_REASONS: &[(&str, EndReason)] = &[
    ("chain_finished", EndReason::ChainFinished),
    ("purchase", EndReason::Purchase),
    ("no_click_suppressed", EndReason::NoClickSuppressed),
    ("campaign_completed", EndReason::CampaignCompleted),
    ("unsubscribed", EndReason::Unsubscribed),
    ("complained", EndReason::Complained),
    ("refused_contact", EndReason::RefusedContact),
    ("erased", EndReason::Erased),
];

/// Stored after-chain states and their enum values.
pub(crate) const AFTER_CHAIN_STATES: &[(&str, AfterChainState)] = &[
    ("active", AfterChainState::Active),
    ("sleeping", AfterChainState::Sleeping),
    ("hot_sleeping", AfterChainState::HotSleeping),
    ("deep_sleep", AfterChainState::DeepSleep),
    ("dead_suppressed", AfterChainState::DeadSuppressed),
];

fn find<E: Copy + Into<i32>>(table: &[(&str, E)], word: &str) -> i32 {
    table
        .iter()
        .find(|(w, _)| *w == word)
        .map(|(_, e)| (*e).into())
        .unwrap_or_default()
}

/// The enum value of a stored step outcome (UNSPECIFIED for an unknown word).
pub(crate) fn step_result(word: &str) -> i32 {
    find(STEP_RESULTS, word)
}

/// The enum value of a stored end reason.
pub(crate) fn end_reason(word: &str) -> i32 {
    find(END_REASONS, word)
}

/// The enum value of a stored after-chain state.
pub(crate) fn after_chain_state(word: &str) -> i32 {
    find(AFTER_CHAIN_STATES, word)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every enum value but UNSPECIFIED has exactly one word, and back.
    fn walks<E: Copy + Into<i32>>(table: &[(&str, E)], values: impl Iterator<Item = i32>) {
        let mapped: Vec<i32> = table.iter().map(|(_, e)| (*e).into()).collect();
        for value in values.filter(|v| *v != 0) {
            assert_eq!(
                mapped.iter().filter(|m| **m == value).count(),
                1,
                "value {value}"
            );
        }
        for (word, e) in table {
            assert_eq!(find(table, word), (*e).into(), "{word}");
        }
        assert_eq!(find(table, "no such word"), 0);
    }

    #[test]
    fn every_value_of_every_enum_has_its_one_word() {
        walks(
            STEP_RESULTS,
            (0..=11).filter(|v| StepResult::try_from(*v).is_ok()),
        );
        assert!(
            StepResult::try_from(12).is_err(),
            "a new value needs its word"
        );
        walks(
            END_REASONS,
            (0..=8).filter(|v| EndReason::try_from(*v).is_ok()),
        );
        assert!(
            EndReason::try_from(9).is_err(),
            "a new value needs its word"
        );
        walks(
            AFTER_CHAIN_STATES,
            (0..=5).filter(|v| AfterChainState::try_from(*v).is_ok()),
        );
        assert!(
            AfterChainState::try_from(6).is_err(),
            "a new value needs its word"
        );
    }
}
