//! `Recompute`: stream a tenant's facts from profiles, fit the models, score every
//! customer, store the scores, and emit change events for customers whose segment or
//! lifecycle state changed since the last recompute.
//!
//! A customer scored for the first time counts as a change from nothing, the tenant's first
//! recompute included: on an imported history that first run is when customers *enter*
//! their segments and states, and a campaign waiting for "entered sleeping" must hear it.
//! A recompute as of a time before the latest run's (a backtest) stores its scores but
//! emits no events and records no transitions: going back in time is not a customer
//! changing.

use std::time::Instant;

use chrono::{DateTime, Utc};
use prost::Message;
use sea_orm::TransactionTrait;
use winback_platform::ServiceError;
use winback_platform::time::{to_duration, to_timestamp};
use winback_proto::common::{LifecycleState as ProtoState, Money};
use winback_proto::events::event::Payload;
use winback_proto::events::{LifecycleChanged, SegmentChanged};
use winback_proto::segmentation::{
    FitModelsResponse, GammaGammaFit, NbdFit, ProbeValue, RecomputeResponse,
};
use winback_scoring::gamma_gamma::{GammaGammaFit as ScoringGammaGammaFit, GammaGammaParams};
use winback_scoring::lifecycle::CycleSource;
use winback_scoring::nbd::{NbdFit as ScoringNbdFit, NbdModel, NbdParams, Observation};
use winback_scoring::score::{
    FitStart, FrozenScoring, ModelChoice, MonetaryBasis, PROSPECT_SEGMENT, PROSPECT_SEGMENT_KEY,
    Score, TenantModels, score_tenant,
};

use crate::context::Segmentation;
use crate::facts::{self, TenantFacts};
use crate::incremental::{RunState, StoredBoundaries, policy_fingerprint};
use crate::members::{Member, RunMembers};
use crate::policy::Effective;
use crate::scores::{
    CHUNK_SIZE, Membership, StoredScore, chunk_bytes, decode_patch, encode_chunk, memberships,
    proto_state,
};
use crate::store::queries::{self, ChunkRow, RunRow, TransitionRow};
use crate::summary::SummaryBuilder;

/// The name of the fallback scoring rule when no purchase model converged.
pub(crate) const CYCLE_RULE: &str = "cycle_rule";

/// Largest clock skew accepted for an as-of time in the future.
const MAX_FUTURE_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// When an analysis stands: the time, and whether history is cut there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AsOf {
    /// The as-of time.
    pub(crate) at: DateTime<Utc>,
    /// True for an as-of time a request gave: profiles rebuilds the facts from the orders
    /// and engagement at or before it. False for now: the current facts.
    pub(crate) cut_history: bool,
}

impl AsOf {
    /// Now, from the current facts.
    pub(crate) fn now(now: DateTime<Utc>) -> Self {
        Self {
            at: now,
            cut_history: false,
        }
    }
}

impl Segmentation {
    /// Checks a requested as-of time against the clock: any time from 1970 on, up to the
    /// clock skew ahead of now.
    pub(crate) fn as_of(
        &self,
        requested: Option<&prost_types::Timestamp>,
    ) -> Result<AsOf, ServiceError> {
        let now = self.now();
        let Some(ts) = requested else {
            return Ok(AsOf::now(now));
        };
        let as_of = winback_platform::time::from_timestamp(ts)
            .ok_or_else(|| ServiceError::invalid("as_of", "not a valid time"))?;
        if as_of > now + MAX_FUTURE_SKEW {
            return Err(ServiceError::invalid("as_of", "must not be in the future"));
        }
        if as_of.timestamp() < 0 {
            return Err(ServiceError::invalid(
                "as_of",
                "must be 1970-01-01T00:00:00Z or later",
            ));
        }
        Ok(AsOf {
            at: as_of,
            cut_history: true,
        })
    }

    /// Runs a recompute of `tenant`: incremental when asked and possible, else full.
    pub(crate) async fn recompute(
        &self,
        tenant: &str,
        requested: AsOf,
        incremental: bool,
    ) -> Result<RecomputeResponse, ServiceError> {
        if incremental && requested.cut_history {
            return Err(ServiceError::invalid(
                "incremental",
                "cannot be combined with as_of (a backtest recomputes in full)",
            ));
        }
        let lock = self.recompute_lock(tenant);
        let _running = lock.lock().await;
        let started = Instant::now();
        let as_of = requested.at;
        let policy = self.effective_policy(tenant).await?;
        let latest = queries::runs(&self.db, tenant, 1)
            .await
            .map_err(ServiceError::internal)?
            .into_iter()
            .next();
        if incremental
            && let Some(response) = self
                .recompute_incremental(tenant, &policy, latest.as_ref())
                .await?
        {
            return Ok(response);
        }
        // Going back in time (a backtest) is not a change of any customer.
        let backwards = latest
            .as_ref()
            .is_some_and(|latest| latest.as_of_us > as_of.timestamp_micros());
        // A recompute as of now starts its fits where the last one ended; a backtest fits
        // from scratch, as a fit on the truncated history alone would.
        let start = latest
            .filter(|_| !requested.cut_history)
            .and_then(|run| fit_start(&run.models, policy.scoring.time_unit_days));
        // The last run's scores are read while the facts stream and the models fit.
        let previous = (!backwards).then(|| {
            let (db, tenant) = (self.db.clone(), tenant.to_owned());
            tokio::spawn(async move {
                let chunks = previous_chunks(&db, &tenant).await?;
                let patches = queries::patches(&db, &tenant)
                    .await
                    .map_err(ServiceError::internal)?;
                Ok::<_, ServiceError>((chunks, patches))
            })
        });
        let facts = facts::load(&self.ctx, tenant, requested).await?;
        let loaded = started.elapsed();
        let currency = facts.main_currency();
        let facts_cursor = facts.cursor.clone();
        let customers_at_full = facts.customers.len() as i64;
        let (facts, models, scores, frozen) = score_blocking(facts, policy.clone(), start).await?;
        let scored = started.elapsed();
        let recompute_id = uuid::Uuid::now_v7().to_string();
        let previous = match previous {
            Some(task) => Some(task.await.map_err(ServiceError::internal)??),
            None => None,
        };
        let now = self.now();
        let assembly = Assembly {
            keep_members: !requested.cut_history,
            facts,
            scores,
            policy: policy.clone(),
            previous,
            recompute_id: recompute_id.clone(),
            now,
        };
        // The chunks go into the database as the two assembling threads make them.
        let txn = self.db.begin().await.map_err(ServiceError::internal)?;
        queries::delete_chunks(&txn, tenant)
            .await
            .map_err(ServiceError::internal)?;
        queries::delete_patches(&txn, tenant)
            .await
            .map_err(ServiceError::internal)?;
        let (chunk_tx, mut chunk_rx) = tokio::sync::mpsc::channel::<(i64, ChunkRow)>(64);
        let assembling = tokio::task::spawn_blocking(move || assembly.assemble(&chunk_tx));
        let mut batch = Vec::with_capacity(CHUNKS_PER_STATEMENT);
        while let Some(chunk) = chunk_rx.recv().await {
            batch.push(chunk);
            if batch.len() == CHUNKS_PER_STATEMENT {
                queries::insert_chunks(&txn, tenant, std::mem::take(&mut batch))
                    .await
                    .map_err(ServiceError::internal)?;
            }
        }
        queries::insert_chunks(&txn, tenant, batch)
            .await
            .map_err(ServiceError::internal)?;
        let Assembled {
            summary,
            changes,
            customers,
            members,
        } = assembling.await.map_err(ServiceError::internal)??;

        let took = started.elapsed();
        let compared = took;
        // What the next incremental run builds on; a backtest leaves nothing to build on.
        let next_state = (!requested.cut_history).then(|| {
            RunState {
                facts_cursor,
                recency: Some(StoredBoundaries::of(&frozen.boundaries.recency)),
                frequency: frozen
                    .boundaries
                    .frequency
                    .as_ref()
                    .map(StoredBoundaries::of),
                monetary: Some(StoredBoundaries::of(&frozen.boundaries.monetary)),
                tenant_cycle_days: frozen.tenant_cycle_days,
                tallies: Some(summary.tallies()),
                full_as_of_us: as_of.timestamp_micros(),
                patched: 0,
                full_customers: customers_at_full,
                policy_fingerprint: policy_fingerprint(&policy),
                currency: currency.clone(),
            }
            .encode_to_vec()
        });
        let summary = summary.finish(currency);
        let models = models
            .map(|m| {
                fit_response(
                    &m,
                    &FitRequest::plain(as_of, policy.scoring.time_unit_days),
                    policy.scoring.model,
                    took,
                )
            })
            .unwrap_or_default();
        let response = RecomputeResponse {
            recompute_id: recompute_id.clone(),
            customers_scored: customers as i64,
            segment_changes: changes.segment_changes,
            lifecycle_changes: changes.lifecycle_changes,
            took: Some(to_duration(
                chrono::Duration::from_std(took).unwrap_or_default(),
            )),
            as_of: Some(to_timestamp(as_of)),
            incremental: false,
        };
        self.commit_run(
            txn,
            tenant,
            changes,
            RunRow {
                recompute_id,
                as_of_us: as_of.timestamp_micros(),
                finished_at_us: now.timestamp_micros(),
                took_us: started.elapsed().as_micros() as i64,
                customers: response.customers_scored,
                segment_changes: response.segment_changes,
                lifecycle_changes: response.lifecycle_changes,
                summary: summary.encode_to_vec(),
                models: models.encode_to_vec(),
                incremental: next_state.unwrap_or_default(),
            },
            now,
        )
        .await?;
        if self.db.get_database_backend() == sea_orm::DbBackend::Sqlite {
            // A full run writes tens of megabytes to the WAL: copy them back now, as part
            // of this run, rather than in whichever small commit next passes the
            // auto-checkpoint threshold (an incremental run paid 0.2 s for it).
            use sea_orm::ConnectionTrait;
            self.db
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await
                .map_err(ServiceError::internal)?;
        }
        match members {
            Some(members) => self.members.put(
                tenant,
                RunMembers::full(response.recompute_id.clone(), members),
            ),
            None => self.members.forget(tenant),
        }
        let mut response = response;
        response.took = Some(to_duration(
            chrono::Duration::from_std(started.elapsed()).unwrap_or_default(),
        ));
        tracing::info!(
            tenant,
            customers = response.customers_scored,
            segment_changes = response.segment_changes,
            lifecycle_changes = response.lifecycle_changes,
            took_ms = started.elapsed().as_millis() as u64,
            load_ms = loaded.as_millis() as u64,
            score_ms = (scored - loaded).as_millis() as u64,
            compare_ms = (compared - scored).as_millis() as u64,
            store_ms = (started.elapsed() - compared).as_millis() as u64,
            "recomputed segments"
        );
        Ok(response)
    }

    /// Records a run in `txn` — its transitions, the run row, its change events — and
    /// commits: the last step of a full and of an incremental run.
    pub(crate) async fn commit_run(
        &self,
        txn: sea_orm::DatabaseTransaction,
        tenant: &str,
        changes: Changes,
        run: RunRow,
        now: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        queries::insert_transitions(&txn, tenant, &changes.transitions)
            .await
            .map_err(ServiceError::internal)?;
        queries::insert_run(&txn, tenant, run)
            .await
            .map_err(ServiceError::internal)?;
        let events: Vec<_> = changes
            .into_events()
            .map(|payload| (tenant.to_owned(), now, payload))
            .collect();
        self.outbox
            .append_many(&txn, events)
            .await
            .map_err(ServiceError::internal)?;
        txn.commit().await.map_err(ServiceError::internal)?;
        self.outbox.notify_committed();
        Ok(())
    }

    /// Fits the models on the tenant's customers without storing anything.
    pub(crate) async fn fit_models(
        &self,
        tenant: &str,
        as_of: AsOf,
        time_unit_days: Option<f64>,
        horizon: Option<f64>,
        probes: Vec<Observation>,
    ) -> Result<FitModelsResponse, ServiceError> {
        let started = Instant::now();
        let policy = self.effective_policy(tenant).await?;
        let unit = time_unit_days.unwrap_or(policy.scoring.time_unit_days);
        let facts = facts::load(&self.ctx, tenant, as_of).await?;
        let inputs = facts.inputs();
        drop(facts);
        let models = tokio::task::spawn_blocking(move || TenantModels::fit(&inputs, unit))
            .await
            .map_err(ServiceError::internal)?
            .ok_or_else(|| {
                ServiceError::FailedPrecondition(
                    "the tenant has no customers with purchases to fit".into(),
                )
            })?;
        let request = FitRequest {
            as_of: as_of.at,
            unit_days: unit,
            horizon,
            probes,
        };
        Ok(fit_response(
            &models,
            &request,
            policy.scoring.model,
            started.elapsed(),
        ))
    }
}

/// Fits and scores on a blocking thread (a million customers take about a second of CPU).
async fn score_blocking(
    facts: TenantFacts,
    policy: Effective,
    start: Option<FitStart>,
) -> Result<(TenantFacts, Option<TenantModels>, Vec<Score>, FrozenScoring), ServiceError> {
    tokio::task::spawn_blocking(move || {
        let inputs = facts.inputs();
        let started = Instant::now();
        let models = TenantModels::fit_from(&inputs, policy.scoring.time_unit_days, start.as_ref());
        tracing::debug!(
            fit_ms = started.elapsed().as_millis() as u64,
            "fitted models"
        );
        let scored = score_tenant(&inputs, &policy.lookup, &policy.scoring, models.as_ref());
        (facts, models, scored.scores, scored.frozen)
    })
    .await
    .map_err(ServiceError::internal)
}

/// Where the fits start: the converged parameters of a stored run's fits in the same time
/// unit (a run in another unit, or unreadable, starts from scratch).
fn fit_start(encoded_models: &[u8], unit_days: f64) -> Option<FitStart> {
    let fits = FitModelsResponse::decode(encoded_models).ok()?;
    let same_unit = fits
        .time_unit
        .is_some_and(|u| u.seconds == (unit_days * 86_400.0).round() as i64);
    if !same_unit {
        return None;
    }
    let models = stored_models(&fits)?;
    let converged = |fit: &ScoringNbdFit| fit.converged.then_some(fit.params);
    Some(FitStart {
        bg_nbd: converged(&models.bg_nbd),
        mbg_nbd: converged(&models.mbg_nbd),
        gamma_gamma: models.gamma_gamma.filter(|g| g.converged).map(|g| g.params),
    })
}

/// A run's stored fits as the scoring library's models.
pub(crate) fn stored_models(fits: &FitModelsResponse) -> Option<TenantModels> {
    let nbd = |fit: &Option<NbdFit>, model| {
        fit.as_ref().map(|f| ScoringNbdFit {
            model,
            params: NbdParams {
                r: f.r,
                alpha: f.alpha,
                a: f.a,
                b: f.b,
            },
            log_likelihood: f.log_likelihood,
            customers: f.customers as u64,
            distinct_rows: f.distinct_rows as u64,
            converged: f.converged,
            problem: None,
            iterations: 0,
        })
    };
    Some(TenantModels {
        bg_nbd: nbd(&fits.bg_nbd, NbdModel::BgNbd)?,
        mbg_nbd: nbd(&fits.mbg_nbd, NbdModel::MbgNbd)?,
        gamma_gamma: fits.gamma_gamma.as_ref().map(|g| ScoringGammaGammaFit {
            params: GammaGammaParams {
                p: g.p,
                q: g.q,
                gamma: g.gamma,
            },
            log_likelihood: g.log_likelihood,
            customers: g.customers as u64,
            converged: g.converged,
            problem: None,
        }),
    })
}

fn chunk_row(scores: Vec<StoredScore>) -> ChunkRow {
    ChunkRow {
        first_customer_id: scores
            .first()
            .map(|s| s.customer_id.clone())
            .unwrap_or_default(),
        last_customer_id: scores
            .last()
            .map(|s| s.customer_id.clone())
            .unwrap_or_default(),
        scores: encode_chunk(scores),
    }
}

pub(crate) fn stored_score(
    row: &facts::CustomerRow,
    score: &Score,
    facts: &TenantFacts,
    policy: &Effective,
) -> StoredScore {
    let c = &row.input;
    let segment = if score.segment == PROSPECT_SEGMENT {
        PROSPECT_SEGMENT_KEY.to_owned()
    } else {
        policy.lookup.key(score.segment).to_owned()
    };
    let monetary = match policy.scoring.monetary {
        MonetaryBasis::Total => c.total_spent,
        MonetaryBasis::Average => c.average_check,
    };
    StoredScore {
        customer_id: row.customer_id.clone(),
        segment,
        state: proto_state(score.lifecycle.state) as i32,
        r: u32::from(score.r),
        f: u32::from(score.f),
        m: u32::from(score.m),
        recency_days: c.days_since_last,
        frequency: c.purchase_days,
        monetary_minor: monetary as i64,
        currency: facts
            .currencies
            .get(usize::from(row.currency))
            .cloned()
            .unwrap_or_default(),
        expected_cycle_days: score.lifecycle.expected_cycle_days,
        days_overdue: score.lifecycle.days_overdue,
        own_cycle: score.lifecycle.cycle_source == CycleSource::Own,
        p_alive: score.p_alive,
        expected_purchases_90d: score.expected_purchases_90d,
        clv_minor: score.clv.round() as i64,
        days_since_engagement: if c.days_since_engagement.is_finite() {
            c.days_since_engagement
        } else {
            -1.0
        },
        consecutive_unopened: c.consecutive_unopened,
    }
}

/// Every stored chunk of the tenant's last run, in order.
pub(crate) async fn previous_chunks(
    db: &sea_orm::DatabaseConnection,
    tenant: &str,
) -> Result<Vec<Vec<u8>>, ServiceError> {
    const CHUNKS_PER_READ: i64 = 25;
    let mut chunks = Vec::new();
    loop {
        let page = queries::chunks(db, tenant, chunks.len() as i64, CHUNKS_PER_READ)
            .await
            .map_err(ServiceError::internal)?;
        let last_page = page.len() < CHUNKS_PER_READ as usize;
        chunks.extend(page.into_iter().map(|(_, chunk)| chunk.scores));
        if last_page {
            return Ok(chunks);
        }
    }
}

/// The memberships of the chunks with an incremental run's patches laid over them (both
/// sorted by customer id): a patch replaces its customer, an empty one (erased) removes it.
fn overlay<'a>(
    chunks: Vec<Membership<'a>>,
    patches: &'a [(&'a str, Option<StoredScore>)],
) -> Vec<Membership<'a>> {
    if patches.is_empty() {
        return chunks;
    }
    let patch_membership = |(id, score): &'a (&'a str, Option<StoredScore>)| {
        score.as_ref().map(|s| Membership {
            customer_id: id,
            segment: &s.segment,
            state: s.state,
        })
    };
    let mut out = Vec::with_capacity(chunks.len() + patches.len());
    let mut patches = patches.iter().peekable();
    for m in chunks {
        while let Some(p) = patches.next_if(|p| p.0 < m.customer_id) {
            out.extend(patch_membership(p));
        }
        match patches.next_if(|p| p.0 == m.customer_id) {
            Some(p) => out.extend(patch_membership(p)),
            None => out.push(m),
        }
    }
    out.extend(patches.filter_map(patch_membership));
    out
}

/// Below this many customers one thread assembles faster than two start.
const PARALLEL_FROM: usize = 20_000;

/// The last run's stored chunks and patches (customer id, encoded score or empty).
type PreviousRun = (Vec<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// What turns a run's scores into stored chunks, a summary and changes.
struct Assembly {
    /// Whether to keep the members for the next incremental run (not for a backtest).
    keep_members: bool,
    facts: TenantFacts,
    scores: Vec<Score>,
    policy: Effective,
    /// The last run's chunks and patches; `None` for a backtest, which compares with
    /// nothing.
    previous: Option<PreviousRun>,
    recompute_id: String,
    now: DateTime<Utc>,
}

/// Chunks per insert statement (≈ 2 MB of scores).
const CHUNKS_PER_STATEMENT: usize = 20;

/// Where assembled chunks go: numbered, to the task that inserts them.
type ChunkSink = tokio::sync::mpsc::Sender<(i64, ChunkRow)>;

/// What a run found besides its chunks.
struct Assembled {
    summary: SummaryBuilder,
    changes: Changes,
    customers: usize,
    /// The members, sorted, when kept.
    members: Option<Vec<(Box<str>, Member)>>,
}

impl Assembly {
    /// Builds the stored scores, chunks, summary and changes, in two halves on two cores
    /// for a large tenant (split at a chunk boundary, so the chunks are those one pass
    /// makes).
    fn assemble(self, sink: &ChunkSink) -> Result<Assembled, ServiceError> {
        let (chunks, patches) = match &self.previous {
            Some((chunks, patches)) => (chunks.as_slice(), patches.as_slice()),
            None => (&[][..], &[][..]),
        };
        let previous_chunks = chunks
            .iter()
            .map(|chunk| chunk_bytes(chunk))
            .collect::<Result<Vec<_>, _>>()?;
        let mut previous: Vec<Membership<'_>> = Vec::new();
        for chunk in &previous_chunks {
            previous.extend(memberships(chunk)?);
        }
        if !previous.is_sorted_by(|a, b| a.customer_id < b.customer_id) {
            previous.sort_unstable_by(|a, b| a.customer_id.cmp(b.customer_id));
        }
        let patched = patches
            .iter()
            .map(|(id, score)| Ok((id.as_str(), decode_patch(score)?)))
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let previous = overlay(previous, &patched);
        let n = self.facts.customers.len();
        let split = if n < PARALLEL_FROM {
            n
        } else {
            (n / 2).div_ceil(CHUNK_SIZE) * CHUNK_SIZE
        };
        let compare = self.previous.is_some();
        let (first, second) = std::thread::scope(|threads| {
            let second = threads.spawn(|| self.assemble_part(split..n, &previous, compare, sink));
            let first = self.assemble_part(0..split, &previous, compare, sink);
            (
                first,
                second
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            )
        });
        let mut assembled = first;
        assembled.summary.merge(second.summary);
        assembled.changes.merge(second.changes);
        if let (Some(members), Some(more)) = (&mut assembled.members, second.members) {
            members.extend(more);
        }
        assembled.customers = n;
        Ok(assembled)
    }

    fn assemble_part(
        &self,
        range: std::ops::Range<usize>,
        previous: &[Membership<'_>],
        compare: bool,
        sink: &ChunkSink,
    ) -> Assembled {
        let (facts, policy) = (&self.facts, &self.policy);
        let mut summary = SummaryBuilder::new(&policy.lookup);
        let mut changes = Changes::default();
        let mut members = self.keep_members.then(|| Vec::with_capacity(range.len()));
        // The range starts at a chunk boundary.
        let mut chunk_no = (range.start / CHUNK_SIZE) as i64;
        let mut send = |chunk: Vec<StoredScore>| {
            // A closed sink means the store failed; its error is the one reported.
            let _ = sink.blocking_send((chunk_no, chunk_row(chunk)));
            chunk_no += 1;
        };
        let mut chunk: Vec<StoredScore> = Vec::with_capacity(CHUNK_SIZE);
        let rows = &facts.customers[range.clone()];
        let mut previous = match rows.first() {
            Some(first) => {
                let from = previous.partition_point(|p| p.customer_id < first.customer_id.as_str());
                &previous[from..]
            }
            None => &[],
        };
        for (row, score) in rows.iter().zip(&self.scores[range]) {
            let stored = stored_score(row, score, facts, policy);
            let segment = (score.segment != PROSPECT_SEGMENT).then_some(score.segment);
            summary.add(segment, &stored);
            if let Some(members) = &mut members {
                members.push((
                    Box::<str>::from(stored.customer_id.as_str()),
                    Member::of(segment, &stored),
                ));
            }
            if compare {
                while previous
                    .first()
                    .is_some_and(|p| p.customer_id < row.customer_id.as_str())
                {
                    previous = &previous[1..];
                }
                let (segment, state) = match previous.first() {
                    Some(p) if p.customer_id == row.customer_id => (p.segment, p.state),
                    _ => ("", ProtoState::Unspecified as i32),
                };
                changes.compare(&stored, segment, state, &self.recompute_id, self.now);
            }
            chunk.push(stored);
            if chunk.len() == CHUNK_SIZE {
                send(std::mem::take(&mut chunk));
            }
        }
        if !chunk.is_empty() {
            send(chunk);
        }
        Assembled {
            summary,
            changes,
            customers: 0,
            members,
        }
    }
}

/// Changes found by one recompute.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) segment_changes: i64,
    pub(crate) lifecycle_changes: i64,
    pub(crate) transitions: Vec<TransitionRow>,
    segment_events: Vec<Payload>,
    lifecycle_events: Vec<Payload>,
}

impl Changes {
    /// The events: segment changes, then lifecycle changes (each in customer order). A
    /// run's changes happen at one moment, and events of one type in a row share outbox
    /// rows, where alternating types made a row per event (two million on a first run).
    pub(crate) fn into_events(self) -> impl Iterator<Item = Payload> {
        self.segment_events.into_iter().chain(self.lifecycle_events)
    }

    fn merge(&mut self, other: Changes) {
        self.segment_changes += other.segment_changes;
        self.lifecycle_changes += other.lifecycle_changes;
        self.transitions.extend(other.transitions);
        self.segment_events.extend(other.segment_events);
        self.lifecycle_events.extend(other.lifecycle_events);
    }

    pub(crate) fn compare(
        &mut self,
        new: &StoredScore,
        old_segment: &str,
        old_state: i32,
        recompute_id: &str,
        now: DateTime<Utc>,
    ) {
        let segment_changed = new.segment != old_segment;
        let state_changed = new.state != old_state;
        if segment_changed {
            self.segment_changes += 1;
            self.segment_events
                .push(Payload::SegmentChanged(SegmentChanged {
                    customer_id: new.customer_id.clone(),
                    previous_segment: old_segment.to_owned(),
                    segment: new.segment.clone(),
                    recompute_id: recompute_id.to_owned(),
                }));
        }
        if state_changed {
            self.lifecycle_changes += 1;
            self.lifecycle_events
                .push(Payload::LifecycleChanged(LifecycleChanged {
                    customer_id: new.customer_id.clone(),
                    previous_state: old_state,
                    state: new.state,
                    p_alive: new.p_alive,
                    clv: Some(Money {
                        amount_minor: new.clv_minor,
                        currency: new.currency.clone(),
                    }),
                    recompute_id: recompute_id.to_owned(),
                }));
        }
        if segment_changed || state_changed {
            self.transitions.push(TransitionRow {
                seq: 0,
                customer_id: new.customer_id.clone(),
                from_segment: old_segment.to_owned(),
                to_segment: new.segment.clone(),
                from_state: old_state,
                to_state: new.state,
                recompute_id: recompute_id.to_owned(),
                at_us: now.timestamp_micros(),
            });
        }
    }
}

/// What a fit's report is asked for.
#[derive(Debug, Clone)]
pub(crate) struct FitRequest {
    pub(crate) as_of: DateTime<Utc>,
    pub(crate) unit_days: f64,
    /// Horizon of the expectations, in the time unit.
    pub(crate) horizon: Option<f64>,
    /// Histories to evaluate each model at, in the time unit.
    pub(crate) probes: Vec<Observation>,
}

impl FitRequest {
    /// Parameters only.
    fn plain(as_of: DateTime<Utc>, unit_days: f64) -> Self {
        Self {
            as_of,
            unit_days,
            horizon: None,
            probes: Vec::new(),
        }
    }
}

fn nbd_fit(fit: &ScoringNbdFit, request: &FitRequest) -> NbdFit {
    let params = fit.params;
    let horizon = request.horizon.unwrap_or(0.0);
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    NbdFit {
        r: params.r,
        alpha: params.alpha,
        a: params.a,
        b: params.b,
        log_likelihood: fit.log_likelihood,
        customers: fit.customers as i64,
        distinct_rows: fit.distinct_rows as i64,
        converged: fit.converged,
        problem: fit.problem.map(|p| p.to_string()).unwrap_or_default(),
        expected_purchases_horizon: request
            .horizon
            .map_or(0.0, |h| finite(params.expected_purchases(fit.model, h))),
        probes: request
            .probes
            .iter()
            .map(|&o| ProbeValue {
                p_alive: finite(params.p_alive(fit.model, o)),
                conditional_expected_purchases: finite(
                    params.conditional_expected_purchases(fit.model, horizon, o),
                ),
            })
            .collect(),
    }
}

/// The API form of a tenant's fits.
pub(crate) fn fit_response(
    models: &TenantModels,
    request: &FitRequest,
    choice: ModelChoice,
    took: std::time::Duration,
) -> FitModelsResponse {
    FitModelsResponse {
        bg_nbd: Some(nbd_fit(&models.bg_nbd, request)),
        mbg_nbd: Some(nbd_fit(&models.mbg_nbd, request)),
        gamma_gamma: models.gamma_gamma.map(|g| GammaGammaFit {
            p: g.params.p,
            q: g.params.q,
            gamma: g.params.gamma,
            log_likelihood: g.log_likelihood,
            customers: g.customers as i64,
            converged: g.converged,
            problem: g.problem.map(|p| p.to_string()).unwrap_or_default(),
        }),
        preferred_model: models
            .chosen(choice)
            .map_or(CYCLE_RULE, |fit| fit.model.key())
            .to_owned(),
        as_of: Some(to_timestamp(request.as_of)),
        time_unit: Some(prost_types::Duration {
            seconds: (request.unit_days * 86_400.0).round() as i64,
            nanos: 0,
        }),
        took: Some(to_duration(
            chrono::Duration::from_std(took).unwrap_or_default(),
        )),
    }
}
