//! The summary of one recompute: size per segment and lifecycle state, and the 5×5
//! recency × frequency grid with counts and average monetary value.

use winback_proto::common::LifecycleState as ProtoState;
use winback_proto::segmentation::{
    GetSegmentSummaryResponse, GridCell, LifecycleSize, SegmentSize,
};
use winback_scoring::score::PROSPECT_SEGMENT_KEY;
use winback_scoring::segments::SegmentLookup;

use crate::scores::StoredScore;

/// Counts scores as they are produced.
#[derive(Debug)]
pub(crate) struct SummaryBuilder {
    segment_keys: Vec<String>,
    segment_counts: Vec<i64>,
    prospects: i64,
    state_counts: [i64; 7],
    grid_counts: [i64; 25],
    grid_monetary: [i128; 25],
    total: i64,
}

/// A builder's counts as stored with a run, for an incremental run to carry on from.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Tallies {
    #[prost(int64, repeated, tag = "1")]
    pub(crate) segment_counts: Vec<i64>,
    #[prost(int64, tag = "2")]
    pub(crate) prospects: i64,
    #[prost(int64, repeated, tag = "3")]
    pub(crate) state_counts: Vec<i64>,
    #[prost(int64, repeated, tag = "4")]
    pub(crate) grid_counts: Vec<i64>,
    /// Sums of monetary values per grid cell (minor units; an i64 holds any tenant's).
    #[prost(int64, repeated, tag = "5")]
    pub(crate) grid_monetary: Vec<i64>,
    #[prost(int64, tag = "6")]
    pub(crate) total: i64,
}

/// States in the order summaries list them.
const STATES: [ProtoState; 6] = [
    ProtoState::Active,
    ProtoState::HotInactive,
    ProtoState::Sleeping,
    ProtoState::NearlyLost,
    ProtoState::Dead,
    ProtoState::Prospect,
];

impl SummaryBuilder {
    pub(crate) fn new(lookup: &SegmentLookup) -> Self {
        Self {
            segment_keys: lookup.segments().to_vec(),
            segment_counts: vec![0; lookup.segments().len()],
            prospects: 0,
            state_counts: [0; 7],
            grid_counts: [0; 25],
            grid_monetary: [0; 25],
            total: 0,
        }
    }

    pub(crate) fn add(&mut self, segment_index: Option<u16>, score: &StoredScore) {
        self.count(segment_index, score, 1);
    }

    /// Takes back what [`add`](Self::add) counted for `score` (a customer rescored or
    /// erased by an incremental run).
    pub(crate) fn remove(&mut self, segment_index: Option<u16>, score: &StoredScore) {
        self.count(segment_index, score, -1);
    }

    fn count(&mut self, segment_index: Option<u16>, score: &StoredScore, sign: i64) {
        self.total += sign;
        match segment_index.and_then(|i| self.segment_counts.get_mut(usize::from(i))) {
            Some(n) => *n += sign,
            None => self.prospects += sign,
        }
        if let Some(n) = self.state_counts.get_mut(score.state.clamp(0, 6) as usize) {
            *n += sign;
        }
        if (1..=5).contains(&score.r) && (1..=5).contains(&score.f) {
            let cell = ((score.r - 1) * 5 + (score.f - 1)) as usize;
            self.grid_counts[cell] += sign;
            self.grid_monetary[cell] += i128::from(score.monetary_minor) * i128::from(sign);
        }
    }

    /// Customers counted.
    pub(crate) fn total(&self) -> i64 {
        self.total
    }

    /// The counts, to store with the run.
    pub(crate) fn tallies(&self) -> Tallies {
        Tallies {
            segment_counts: self.segment_counts.clone(),
            prospects: self.prospects,
            state_counts: self.state_counts.to_vec(),
            grid_counts: self.grid_counts.to_vec(),
            grid_monetary: self
                .grid_monetary
                .iter()
                .map(|&m| m.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
                .collect(),
            total: self.total,
        }
    }

    /// A builder carrying on from stored counts; `None` when they do not fit `lookup` (the
    /// segments changed since).
    pub(crate) fn from_tallies(lookup: &SegmentLookup, tallies: &Tallies) -> Option<Self> {
        let mut builder = Self::new(lookup);
        if tallies.segment_counts.len() != builder.segment_counts.len() {
            return None;
        }
        builder.segment_counts.clone_from(&tallies.segment_counts);
        builder.prospects = tallies.prospects;
        builder.state_counts = tallies.state_counts.as_slice().try_into().ok()?;
        builder.grid_counts = tallies.grid_counts.as_slice().try_into().ok()?;
        let monetary: [i64; 25] = tallies.grid_monetary.as_slice().try_into().ok()?;
        builder.grid_monetary = monetary.map(i128::from);
        builder.total = tallies.total;
        Some(builder)
    }

    /// Adds the counts of another builder over the same lookup (another part of the tenant).
    pub(crate) fn merge(&mut self, other: SummaryBuilder) {
        self.total += other.total;
        self.prospects += other.prospects;
        for (n, m) in self.segment_counts.iter_mut().zip(other.segment_counts) {
            *n += m;
        }
        for (n, m) in self.state_counts.iter_mut().zip(other.state_counts) {
            *n += m;
        }
        for (n, m) in self.grid_counts.iter_mut().zip(other.grid_counts) {
            *n += m;
        }
        for (n, m) in self.grid_monetary.iter_mut().zip(other.grid_monetary) {
            *n += m;
        }
    }

    /// The summary, names left empty (they depend on the reader's locale), plus the grid.
    pub(crate) fn finish(self, currency: String) -> GetSegmentSummaryResponse {
        let share = |n: i64| {
            if self.total == 0 {
                0.0
            } else {
                n as f64 / self.total as f64
            }
        };
        let mut segments: Vec<SegmentSize> = self
            .segment_keys
            .iter()
            .zip(&self.segment_counts)
            .map(|(key, &n)| SegmentSize {
                segment: key.clone(),
                name: String::new(),
                customers: n,
                share: share(n),
            })
            .collect();
        if self.prospects > 0 {
            segments.push(SegmentSize {
                segment: PROSPECT_SEGMENT_KEY.to_owned(),
                name: String::new(),
                customers: self.prospects,
                share: share(self.prospects),
            });
        }
        let lifecycle = STATES
            .iter()
            .map(|&state| {
                let n = self.state_counts[state as usize];
                LifecycleSize {
                    state: state as i32,
                    customers: n,
                    share: share(n),
                }
            })
            .collect();
        let grid = (0..25)
            .map(|cell| GridCell {
                r_score: (cell / 5 + 1) as i32,
                f_score: (cell % 5 + 1) as i32,
                customers: self.grid_counts[cell],
                average_monetary_minor: if self.grid_counts[cell] == 0 {
                    0
                } else {
                    (self.grid_monetary[cell] / i128::from(self.grid_counts[cell])) as i64
                },
            })
            .collect();
        GetSegmentSummaryResponse {
            segments,
            lifecycle,
            grid,
            history: Vec::new(),
            currency,
        }
    }
}
