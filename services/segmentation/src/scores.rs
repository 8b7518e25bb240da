//! Stored scores: one compact record per customer, kept in chunks of consecutive customer
//! ids, and their API form.

use prost::Message;
use winback_proto::common::{LifecycleState as ProtoState, Money};
use winback_proto::segmentation::CustomerScore;
use winback_scoring::lifecycle::{
    CycleSource, Lifecycle, LifecyclePolicy, LifecycleState, Signals,
};

use winback_platform::ServiceError;

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

/// First byte of a compressed chunk. A plain chunk starts with field 1's key (0x0A), and 0
/// is never a protobuf key, so chunks stored before compression still read.
const COMPRESSED: u8 = 0;

/// Encodes a chunk, LZ4-compressed: customer ids, segment keys and currencies repeat
/// within a chunk, so it shrinks to about a third, and writing a million scores is mostly
/// writing their bytes.
pub(crate) fn encode_chunk(scores: Vec<StoredScore>) -> Vec<u8> {
    let plain = StoredChunk { scores }.encode_to_vec();
    let mut out = Vec::with_capacity(plain.len() / 2);
    out.push(COMPRESSED);
    out.extend(lz4_flex::block::compress_prepend_size(&plain));
    out
}

/// A stored chunk's protobuf bytes (decompressed when it was compressed).
pub(crate) fn chunk_bytes(stored: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, ServiceError> {
    match stored.split_first() {
        Some((&COMPRESSED, compressed)) => lz4_flex::block::decompress_size_prepended(compressed)
            .map(std::borrow::Cow::Owned)
            .map_err(ServiceError::internal),
        _ => Ok(std::borrow::Cow::Borrowed(stored)),
    }
}

/// Decodes a chunk; a corrupt chunk is an internal error.
pub(crate) fn decode_chunk(bytes: &[u8]) -> Result<Vec<StoredScore>, ServiceError> {
    StoredChunk::decode(chunk_bytes(bytes)?.as_ref())
        .map(|c| c.scores)
        .map_err(ServiceError::internal)
}

/// An incremental run's patch: the customer's score, or `None` when they were erased.
pub(crate) fn decode_patch(bytes: &[u8]) -> Result<Option<StoredScore>, ServiceError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    StoredScore::decode(bytes)
        .map(Some)
        .map_err(ServiceError::internal)
}

/// One stored score's membership — customer, segment, state — read straight from a chunk's
/// bytes: comparing a recompute with the last one needs only these three fields of a
/// million scores, and decoding the rest (and allocating their strings) cost more than
/// the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Membership<'a> {
    pub(crate) customer_id: &'a str,
    pub(crate) segment: &'a str,
    pub(crate) state: i32,
}

/// The memberships of a chunk's protobuf bytes ([`chunk_bytes`]), in stored order.
pub(crate) fn memberships(chunk: &[u8]) -> Result<Vec<Membership<'_>>, ServiceError> {
    Ok(memberships_with_records(chunk)?
        .into_iter()
        .map(|(membership, _)| membership)
        .collect())
}

/// The memberships of a chunk's protobuf bytes, each with its score's encoded record (to
/// decode the few a caller wants in full).
pub(crate) fn memberships_with_records(
    chunk: &[u8],
) -> Result<Vec<(Membership<'_>, &[u8])>, ServiceError> {
    let corrupt = || ServiceError::Internal("a stored score chunk is corrupt".into());
    let mut out = Vec::with_capacity(CHUNK_SIZE);
    let mut outer = WireReader(chunk);
    while let Some((tag, field)) = outer.field().ok_or_else(corrupt)? {
        let Field::Bytes(score) = field else {
            continue;
        };
        if tag != 1 {
            continue;
        }
        let mut membership = Membership {
            customer_id: "",
            segment: "",
            state: 0,
        };
        let mut inner = WireReader(score);
        while let Some((tag, field)) = inner.field().ok_or_else(corrupt)? {
            match (tag, field) {
                (1, Field::Bytes(b)) => {
                    membership.customer_id = std::str::from_utf8(b).map_err(|_| corrupt())?
                }
                (2, Field::Bytes(b)) => {
                    membership.segment = std::str::from_utf8(b).map_err(|_| corrupt())?
                }
                (3, Field::Varint(v)) => membership.state = v as i32,
                _ => {}
            }
        }
        out.push((membership, score));
    }
    Ok(out)
}

/// A protobuf field's value, as much as [`memberships`] needs.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Reads protobuf fields off the front of a byte slice.
struct WireReader<'a>(&'a [u8]);

impl<'a> WireReader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// The next (tag, value); `Some(None)` at the end, `None` when malformed.
    fn field(&mut self) -> Option<Option<(u64, Field<'a>)>> {
        if self.0.is_empty() {
            return Some(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?).ok()?;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed
            }
            _ => return None,
        };
        Some(Some((key >> 3, field)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memberships_read_what_the_full_decode_reads() {
        let scores = vec![
            StoredScore {
                customer_id: "c-1".into(),
                segment: "champions".into(),
                state: ProtoState::Active as i32,
                p_alive: 0.9,
                recency_days: 3.0,
                currency: "RUB".into(),
                clv_minor: -5,
                ..Default::default()
            },
            // Defaults are left out of the encoding: an empty segment and state 0.
            StoredScore {
                customer_id: "c-2".into(),
                ..Default::default()
            },
            StoredScore {
                customer_id: "кириллица".into(),
                segment: "prospects".into(),
                state: ProtoState::Prospect as i32,
                days_since_engagement: -1.0,
                ..Default::default()
            },
        ];
        let encoded = encode_chunk(scores.clone());
        assert_eq!(decode_chunk(&encoded).unwrap(), scores);
        let plain = chunk_bytes(&encoded).unwrap();
        let read = memberships(&plain).unwrap();
        let expected: Vec<_> = scores
            .iter()
            .map(|s| Membership {
                customer_id: &s.customer_id,
                segment: &s.segment,
                state: s.state,
            })
            .collect();
        assert_eq!(read, expected);
        assert!(memberships(&plain[..plain.len() - 3]).is_err());
        // A chunk stored before compression reads as it did.
        let uncompressed = StoredChunk {
            scores: scores.clone(),
        }
        .encode_to_vec();
        assert_eq!(decode_chunk(&uncompressed).unwrap(), scores);
        assert!(decode_chunk(&encoded[..encoded.len() - 3]).is_err());
    }
}
