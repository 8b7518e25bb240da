//! Incremental recompute: rescore only the customers whose facts changed since the latest
//! run, as that run would have scored them (its models, RFM boundaries and tenant
//! interval), and keep them as patches over the stored chunks until the next full run.
//!
//! The customers who did not change keep the scores of the last full run, as of its time:
//! an incremental run moves the customers who just bought (or were erased) now, and the
//! daily full run moves everyone's recency on. A run records what the next incremental
//! one needs in [`RunState`].

use std::time::Instant;

use prost::Message;
use sea_orm::TransactionTrait;
use winback_platform::ServiceError;
use winback_platform::time::{to_duration, to_timestamp};
use winback_proto::common::LifecycleState as ProtoState;
use winback_proto::segmentation::{FitModelsResponse, RecomputeResponse};
use winback_scoring::rfm::{Better, Boundaries};
use winback_scoring::score::{
    FrozenScoring, PROSPECT_SEGMENT, PROSPECT_SEGMENT_KEY, RfmBoundaries, score_against,
};
use winback_scoring::segments::SegmentLookup;

use crate::context::Segmentation;
use crate::facts;
use crate::members::Member;
use crate::policy::Effective;
use crate::recompute::{Changes, stored_models, stored_score};
use crate::scores::{StoredScore, chunk_bytes, decode_patch, memberships_with_records};
use crate::store::queries::{self, RunRow};
use crate::summary::{SummaryBuilder, Tallies};

/// What a run leaves for the next incremental one.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct RunState {
    /// Profiles' facts cursor after the facts this run saw.
    #[prost(string, tag = "1")]
    pub(crate) facts_cursor: String,
    #[prost(message, optional, tag = "2")]
    pub(crate) recency: Option<StoredBoundaries>,
    /// Absent when F is given by fixed thresholds.
    #[prost(message, optional, tag = "3")]
    pub(crate) frequency: Option<StoredBoundaries>,
    #[prost(message, optional, tag = "4")]
    pub(crate) monetary: Option<StoredBoundaries>,
    #[prost(double, tag = "5")]
    pub(crate) tenant_cycle_days: f64,
    /// The summary's counts after this run.
    #[prost(message, optional, tag = "6")]
    pub(crate) tallies: Option<Tallies>,
    /// As-of time of the last full run (the time of every unpatched score).
    #[prost(int64, tag = "7")]
    pub(crate) full_as_of_us: i64,
    /// Customers rescored since the last full run.
    #[prost(int64, tag = "8")]
    pub(crate) patched: i64,
    /// Customers of the last full run.
    #[prost(int64, tag = "9")]
    pub(crate) full_customers: i64,
    /// Fingerprint of the policy the run scored under.
    #[prost(uint64, tag = "10")]
    pub(crate) policy_fingerprint: u64,
    /// The summary's currency.
    #[prost(string, tag = "11")]
    pub(crate) currency: String,
}

/// RFM boundaries as stored.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct StoredBoundaries {
    #[prost(double, repeated, tag = "1")]
    pub(crate) lowest: Vec<f64>,
    #[prost(bool, tag = "2")]
    pub(crate) lower_is_better: bool,
}

impl StoredBoundaries {
    pub(crate) fn of(b: &Boundaries) -> Self {
        Self {
            lowest: b.lowest.to_vec(),
            lower_is_better: b.better == Better::Lower,
        }
    }

    fn boundaries(&self) -> Option<Boundaries> {
        Some(Boundaries {
            lowest: self.lowest.as_slice().try_into().ok()?,
            better: if self.lower_is_better {
                Better::Lower
            } else {
                Better::Higher
            },
        })
    }
}

impl RunState {
    /// The run's RFM boundaries and tenant interval; `None` when incomplete.
    fn frozen(&self) -> Option<FrozenScoring> {
        Some(FrozenScoring {
            boundaries: RfmBoundaries {
                recency: self.recency.as_ref()?.boundaries()?,
                frequency: match &self.frequency {
                    Some(f) => Some(f.boundaries()?),
                    None => None,
                },
                monetary: self.monetary.as_ref()?.boundaries()?,
            },
            tenant_cycle_days: self.tenant_cycle_days,
        })
    }
}

/// A fingerprint of the effective policy: an incremental run scores under the policy of
/// the run it builds on, or not at all.
pub(crate) fn policy_fingerprint(policy: &Effective) -> u64 {
    // FNV-1a over the debug form: stable for one build, and a build that changes the form
    // only costs one full recompute.
    format!("{:?}{:?}", policy.scoring, policy.lookup)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Customers rescored since the last full run beyond which a full run is cheaper than
/// patches (and the unpatched scores too old).
fn patch_limit(full_customers: i64) -> i64 {
    (full_customers / 10).max(1_000)
}

impl Segmentation {
    /// Runs an incremental recompute of `tenant`, or returns `None` when a full one must
    /// run instead. The caller holds the tenant's recompute lock.
    pub(crate) async fn recompute_incremental(
        &self,
        tenant: &str,
        policy: &Effective,
        latest: Option<&RunRow>,
    ) -> Result<Option<RecomputeResponse>, ServiceError> {
        let started = Instant::now();
        let Some(latest) = latest else {
            return Ok(None);
        };
        let Ok(state) = RunState::decode(latest.incremental.as_slice()) else {
            return Ok(None);
        };
        let Some(frozen) = state.frozen() else {
            return Ok(None);
        };
        let now = self.now();
        if state.policy_fingerprint != policy_fingerprint(policy)
            || latest.as_of_us > now.timestamp_micros()
        {
            return Ok(None);
        }
        let Some(mut summary) = state
            .tallies
            .as_ref()
            .and_then(|t| SummaryBuilder::from_tallies(&policy.lookup, t))
        else {
            return Ok(None);
        };
        let changed = facts::load_changed(&self.ctx, tenant, &state.facts_cursor, now).await?;
        let loaded = started.elapsed();
        let rescored = (changed.customers.len() + changed.erased.len()) as i64;
        if state.patched + rescored > patch_limit(state.full_customers) {
            return Ok(None);
        }
        let fits = FitModelsResponse::decode(latest.models.as_slice()).unwrap_or_default();
        let models = stored_models(&fits);
        let inputs = changed.inputs();
        let scores = score_against(
            &inputs,
            &policy.lookup,
            &policy.scoring,
            models.as_ref(),
            &frozen,
        );

        let mut wanted: Vec<&str> = changed
            .customers
            .iter()
            .map(|c| c.customer_id.as_str())
            .chain(changed.erased.iter().map(String::as_str))
            .collect();
        wanted.sort_unstable();
        let previous = self
            .previous_scores(tenant, &latest.recompute_id, &policy.lookup, &wanted)
            .await?;
        let compared = started.elapsed();

        let recompute_id = uuid::Uuid::now_v7().to_string();
        let mut changes = Changes::default();
        let mut patches = Vec::with_capacity(wanted.len());
        let mut members = Vec::with_capacity(wanted.len());
        for (row, score) in changed.customers.iter().zip(&scores) {
            let stored = stored_score(row, score, &changed, policy);
            let segment = (score.segment != PROSPECT_SEGMENT).then_some(score.segment);
            members.push((
                Box::<str>::from(row.customer_id.as_str()),
                Some(Member::of(segment, &stored)),
            ));
            let before = previous.get(&row.customer_id);
            if let Some(old) = before {
                summary.remove(segment_index(&policy.lookup, &old.segment), old);
            }
            summary.add(segment, &stored);
            let (segment, state) = before.map_or(("", ProtoState::Unspecified as i32), |old| {
                (old.segment.as_str(), old.state)
            });
            changes.compare(&stored, segment, state, &recompute_id, now);
            patches.push((row.customer_id.clone(), stored.encode_to_vec()));
        }
        for erased in &changed.erased {
            if let Some(old) = previous.get(erased) {
                summary.remove(segment_index(&policy.lookup, &old.segment), old);
            }
            patches.push((erased.clone(), Vec::new()));
            members.push((Box::<str>::from(erased.as_str()), None));
        }
        let tallies = summary.tallies();
        let response = RecomputeResponse {
            recompute_id: recompute_id.clone(),
            customers_scored: changed.customers.len() as i64,
            segment_changes: changes.segment_changes,
            lifecycle_changes: changes.lifecycle_changes,
            took: None,
            as_of: Some(to_timestamp(now)),
            incremental: true,
        };
        let next_state = RunState {
            facts_cursor: changed.cursor.clone(),
            tallies: Some(tallies),
            patched: state.patched + rescored,
            ..state.clone()
        };
        let txn = self.db.begin().await.map_err(ServiceError::internal)?;
        queries::put_patches(&txn, tenant, patches)
            .await
            .map_err(ServiceError::internal)?;
        self.commit_run(
            txn,
            tenant,
            changes,
            RunRow {
                recompute_id,
                as_of_us: now.timestamp_micros(),
                finished_at_us: now.timestamp_micros(),
                took_us: started.elapsed().as_micros() as i64,
                customers: summary.total(),
                segment_changes: response.segment_changes,
                lifecycle_changes: response.lifecycle_changes,
                summary: summary.finish(state.currency.clone()).encode_to_vec(),
                models: latest.models.clone(),
                incremental: next_state.encode_to_vec(),
            },
            now,
        )
        .await?;
        self.members.patch(
            tenant,
            &latest.recompute_id,
            &response.recompute_id,
            members,
        );
        let mut response = response;
        response.took = Some(to_duration(
            chrono::Duration::from_std(started.elapsed()).unwrap_or_default(),
        ));
        tracing::info!(
            tenant,
            customers = response.customers_scored,
            erased = changed.erased.len(),
            segment_changes = response.segment_changes,
            lifecycle_changes = response.lifecycle_changes,
            took_ms = started.elapsed().as_millis() as u64,
            load_ms = loaded.as_millis() as u64,
            previous_ms = (compared - loaded).as_millis() as u64,
            store_ms = (started.elapsed() - compared).as_millis() as u64,
            "recomputed changed customers"
        );
        Ok(Some(response))
    }

    /// The current stored scores of `wanted` (sorted ids) as far as summaries and change
    /// events need them: from this process's members of run `recompute_id` when it has
    /// them, else patches over chunks.
    async fn previous_scores(
        &self,
        tenant: &str,
        recompute_id: &str,
        lookup: &SegmentLookup,
        wanted: &[&str],
    ) -> Result<std::collections::HashMap<String, StoredScore>, ServiceError> {
        let mut found = std::collections::HashMap::with_capacity(wanted.len());
        if wanted.is_empty() {
            return Ok(found);
        }
        if let Some(members) = self.members.of_run(tenant, recompute_id) {
            let members = members
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for &id in wanted {
                if let Some(m) = members.get(id) {
                    found.insert(id.to_owned(), member_score(id, m, lookup));
                }
            }
            return Ok(found);
        }
        let is_wanted = |id: &str| wanted.binary_search(&id).is_ok();
        for chunk in crate::recompute::previous_chunks(&self.db, tenant).await? {
            let plain = chunk_bytes(&chunk)?;
            for (membership, record) in memberships_with_records(&plain)? {
                if is_wanted(membership.customer_id) {
                    let score = StoredScore::decode(record).map_err(ServiceError::internal)?;
                    found.insert(score.customer_id.clone(), score);
                }
            }
        }
        for (customer_id, patch) in queries::patches(&self.db, tenant)
            .await
            .map_err(ServiceError::internal)?
        {
            if !is_wanted(&customer_id) {
                continue;
            }
            match decode_patch(&patch)? {
                Some(score) => found.insert(customer_id, score),
                None => found.remove(&customer_id),
            };
        }
        Ok(found)
    }
}

/// A member as the stored score fields summaries and change events read.
fn member_score(customer_id: &str, m: Member, lookup: &SegmentLookup) -> StoredScore {
    StoredScore {
        customer_id: customer_id.to_owned(),
        segment: m
            .segment
            .map_or(PROSPECT_SEGMENT_KEY, |i| lookup.key(i))
            .to_owned(),
        state: m.state,
        r: u32::from(m.r),
        f: u32::from(m.f),
        monetary_minor: m.monetary_minor,
        ..Default::default()
    }
}

/// The index of a stored segment key in `lookup` (`None` for prospects and unknown keys).
fn segment_index(lookup: &SegmentLookup, key: &str) -> Option<u16> {
    lookup
        .segments()
        .iter()
        .position(|k| k == key)
        .map(|i| i as u16)
}
