//! Stored scores: one compact record per customer, kept in chunks of consecutive customer
//! ids, and their API form.

use prost::Message;
use winback_proto::common::{LifecycleState as ProtoState, Money};
use winback_proto::segmentation::CustomerScore;
use winback_scoring::lifecycle::{
    CycleSource, Lifecycle, LifecyclePolicy, LifecycleState, Signals,
};

use crate::policy::Effective;

/// Customers per stored chunk.
pub(crate) const CHUNK_SIZE: usize = 2_000;

/// One customer's scores as stored.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredScore {
    #[prost(string, tag = "1")]
    pub(crate) customer_id: String,
    #[prost(string, tag = "2")]
    pub(crate) segment: String,
    /// `winback.common.v1.LifecycleState`.
    #[prost(int32, tag = "3")]
    pub(crate) state: i32,
    #[prost(uint32, tag = "4")]
    pub(crate) r: u32,
    #[prost(uint32, tag = "5")]
    pub(crate) f: u32,
    #[prost(uint32, tag = "6")]
    pub(crate) m: u32,
    #[prost(double, tag = "7")]
    pub(crate) recency_days: f64,
    #[prost(uint32, tag = "8")]
    pub(crate) frequency: u32,
    #[prost(int64, tag = "9")]
    pub(crate) monetary_minor: i64,
    #[prost(string, tag = "10")]
    pub(crate) currency: String,
    #[prost(double, tag = "11")]
    pub(crate) expected_cycle_days: f64,
    #[prost(double, tag = "12")]
    pub(crate) days_overdue: f64,
    #[prost(bool, tag = "13")]
    pub(crate) own_cycle: bool,
    #[prost(double, tag = "14")]
    pub(crate) p_alive: f64,
    #[prost(double, tag = "15")]
    pub(crate) expected_purchases_90d: f64,
    #[prost(int64, tag = "16")]
    pub(crate) clv_minor: i64,
    /// Infinite (never) is stored as −1.
    #[prost(double, tag = "17")]
    pub(crate) days_since_engagement: f64,
    #[prost(uint32, tag = "18")]
    pub(crate) consecutive_unopened: u32,
}

/// A chunk of stored scores.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredChunk {
    #[prost(message, repeated, tag = "1")]
    pub(crate) scores: Vec<StoredScore>,
}

/// The API value of a scoring state.
pub(crate) fn proto_state(state: LifecycleState) -> ProtoState {
    match state {
        LifecycleState::Prospect => ProtoState::Prospect,
        LifecycleState::Active => ProtoState::Active,
        LifecycleState::HotInactive => ProtoState::HotInactive,
        LifecycleState::Sleeping => ProtoState::Sleeping,
        LifecycleState::NearlyLost => ProtoState::NearlyLost,
        LifecycleState::Dead => ProtoState::Dead,
    }
}

fn scoring_state(state: i32) -> LifecycleState {
    match ProtoState::try_from(state).unwrap_or(ProtoState::Unspecified) {
        ProtoState::Active => LifecycleState::Active,
        ProtoState::HotInactive => LifecycleState::HotInactive,
        ProtoState::Sleeping => LifecycleState::Sleeping,
        ProtoState::NearlyLost => LifecycleState::NearlyLost,
        ProtoState::Dead => LifecycleState::Dead,
        ProtoState::Prospect | ProtoState::Unspecified => LifecycleState::Prospect,
    }
}

impl StoredScore {
    /// The API form, with the segment named in `locale` and the reasons in words.
    pub(crate) fn to_proto(
        &self,
        policy: &Effective,
        locale: &str,
        as_of: Option<prost_types::Timestamp>,
    ) -> CustomerScore {
        let money = |amount_minor| {
            Some(Money {
                amount_minor,
                currency: self.currency.clone(),
            })
        };
        CustomerScore {
            customer_id: self.customer_id.clone(),
            recency_days: self.recency_days,
            frequency: self.frequency as i32,
            monetary: money(self.monetary_minor),
            r_score: self.r as i32,
            f_score: self.f as i32,
            m_score: self.m as i32,
            segment: self.segment.clone(),
            segment_name: policy.segment_name(&self.segment, locale),
            lifecycle_state: self.state,
            expected_cycle_days: self.expected_cycle_days,
            days_overdue: self.days_overdue,
            one_visit: self.frequency == 1,
            p_alive: self.p_alive,
            expected_purchases_90d: self.expected_purchases_90d,
            clv: money(self.clv_minor),
            reasons: self.reasons(&policy.scoring.lifecycle),
            as_of,
        }
    }

    fn reasons(&self, policy: &LifecyclePolicy) -> Vec<String> {
        let signals = Signals {
            purchase_days: self.frequency,
            days_since_purchase: self.recency_days,
            mean_interval_days: self.expected_cycle_days,
            days_since_engagement: if self.days_since_engagement < 0.0 {
                f64::INFINITY
            } else {
                self.days_since_engagement
            },
            consecutive_unopened: self.consecutive_unopened,
        };
        let lifecycle = Lifecycle {
            state: scoring_state(self.state),
            expected_cycle_days: self.expected_cycle_days,
            cycle_source: if self.own_cycle {
                CycleSource::Own
            } else {
                CycleSource::Tenant
            },
            days_overdue: self.days_overdue,
        };
        let mut reasons = policy.reasons(&signals, &lifecycle);
        if self.frequency > 0 {
            reasons.push(format!("P(alive) {:.0} %", self.p_alive * 100.0));
        }
        reasons
    }
}

/// Encodes a chunk.
pub(crate) fn encode_chunk(scores: Vec<StoredScore>) -> Vec<u8> {
    StoredChunk { scores }.encode_to_vec()
}

/// Decodes a chunk; a corrupt chunk is an internal error.
pub(crate) fn decode_chunk(
    bytes: &[u8],
) -> Result<Vec<StoredScore>, winback_platform::ServiceError> {
    StoredChunk::decode(bytes)
        .map(|c| c.scores)
        .map_err(winback_platform::ServiceError::internal)
}
