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
        self.total += 1;
        match segment_index.and_then(|i| self.segment_counts.get_mut(usize::from(i))) {
            Some(n) => *n += 1,
            None => self.prospects += 1,
        }
        if let Some(n) = self.state_counts.get_mut(score.state.clamp(0, 6) as usize) {
            *n += 1;
        }
        if (1..=5).contains(&score.r) && (1..=5).contains(&score.f) {
            let cell = ((score.r - 1) * 5 + (score.f - 1)) as usize;
            self.grid_counts[cell] += 1;
            self.grid_monetary[cell] += i128::from(score.monetary_minor);
        }
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
