//! Reading stored scores: one customer, members by filter, the summary, transitions.

use prost::Message;
use tokio::sync::mpsc;
use winback_platform::ServiceError;
use winback_platform::time::to_timestamp;
use winback_proto::common::{LifecycleState as ProtoState, PageResponse};
use winback_proto::segmentation::{
    CustomerScore, GetSegmentSummaryResponse, ListSegmentMembersRequest,
    ListSegmentMembersResponse, ListTransitionsRequest, ListTransitionsResponse, SummarySnapshot,
    Transition,
};

use crate::context::Segmentation;
use crate::policy::Effective;
use crate::scores::{StoredScore, decode_chunk, decode_patch};
use crate::store::queries::{self, RunRow};
use crate::summary::SummaryBuilder;

fn timestamp_us(us: i64) -> Option<prost_types::Timestamp> {
    chrono::DateTime::from_timestamp_micros(us).map(to_timestamp)
}

/// What `ListSegmentMembers` keeps.
#[derive(Debug, Clone)]
pub(crate) struct MemberFilter {
    segments: Vec<String>,
    states: Vec<i32>,
    min_p_alive: f64,
    max_p_alive: f64,
    min_clv: i64,
    max_clv: i64,
    chunk_size: usize,
    locale: String,
}

impl MemberFilter {
    /// Checks the request; every problem names its field.
    pub(crate) fn new(r: ListSegmentMembersRequest) -> Result<Self, ServiceError> {
        let mut violations = Vec::new();
        let mut check = |ok: bool, field: &str, description: &str| {
            if !ok {
                violations.push(winback_platform::error::FieldViolation::new(
                    field,
                    description,
                ));
            }
        };
        for (i, state) in r.lifecycle_states.iter().enumerate() {
            check(
                ProtoState::try_from(*state).is_ok_and(|s| s != ProtoState::Unspecified),
                &format!("lifecycle_states[{i}]"),
                "unknown lifecycle state",
            );
        }
        let max_p_alive = if r.max_p_alive == 0.0 {
            1.0
        } else {
            r.max_p_alive
        };
        check(
            (0.0..=1.0).contains(&r.min_p_alive),
            "min_p_alive",
            "must be between 0 and 1",
        );
        check(
            (0.0..=1.0).contains(&max_p_alive),
            "max_p_alive",
            "must be between 0 and 1",
        );
        check(
            r.min_p_alive <= max_p_alive,
            "min_p_alive",
            "must not be above max_p_alive",
        );
        let max_clv = if r.max_clv_minor == 0 {
            i64::MAX
        } else {
            r.max_clv_minor
        };
        check(
            r.min_clv_minor >= 0,
            "min_clv_minor",
            "must not be negative",
        );
        check(
            r.min_clv_minor <= max_clv,
            "min_clv_minor",
            "must not be above max_clv_minor",
        );
        check(
            (0..=10_000).contains(&r.chunk_size),
            "chunk_size",
            "must be between 0 and 10000",
        );
        if !violations.is_empty() {
            return Err(ServiceError::InvalidArgument(violations));
        }
        Ok(Self {
            segments: r.segments,
            states: r.lifecycle_states,
            min_p_alive: r.min_p_alive,
            max_p_alive,
            min_clv: r.min_clv_minor,
            max_clv,
            chunk_size: if r.chunk_size == 0 {
                1_000
            } else {
                r.chunk_size as usize
            },
            locale: r.locale,
        })
    }

    fn keeps(&self, s: &StoredScore) -> bool {
        (self.segments.is_empty() || self.segments.contains(&s.segment))
            && (self.states.is_empty() || self.states.contains(&s.state))
            && s.p_alive >= self.min_p_alive
            && s.p_alive <= self.max_p_alive
            && s.clv_minor >= self.min_clv
            && s.clv_minor <= self.max_clv
    }
}

impl Segmentation {
    /// One customer's latest score.
    pub(crate) async fn customer_score(
        &self,
        tenant: &str,
        customer_id: &str,
        locale: &str,
    ) -> Result<CustomerScore, ServiceError> {
        if customer_id.trim().is_empty() {
            return Err(ServiceError::invalid("customer_id", "is required"));
        }
        let policy = self.effective_policy(tenant).await?;
        let times = RunTimes::of(self.latest_run(tenant).await?.as_ref());
        let not_found = || ServiceError::not_found_at("customer score", customer_id, "customer_id");
        // An incremental run's patch stands over the chunks.
        if let Some(patch) = queries::patch(&self.db, tenant, customer_id)
            .await
            .map_err(ServiceError::internal)?
        {
            let score = decode_patch(&patch)?.ok_or_else(not_found)?;
            return Ok(score.to_proto(&policy, locale, times.latest));
        }
        let as_of = times.full;
        let chunk = queries::chunk_of(&self.db, tenant, customer_id)
            .await
            .map_err(ServiceError::internal)?;
        let scores = match chunk {
            Some(chunk) if customer_id <= chunk.last_customer_id.as_str() => {
                decode_chunk(&chunk.scores)?
            }
            _ => Vec::new(),
        };
        scores
            .binary_search_by(|s| s.customer_id.as_str().cmp(customer_id))
            .ok()
            .map(|i| scores[i].to_proto(&policy, locale, as_of))
            .ok_or_else(not_found)
    }

    async fn latest_run(&self, tenant: &str) -> Result<Option<RunRow>, ServiceError> {
        Ok(queries::runs(&self.db, tenant, 1)
            .await
            .map_err(ServiceError::internal)?
            .into_iter()
            .next())
    }

    /// Streams the members matching `filter` into `tx`, chunk by chunk.
    pub(crate) async fn stream_members(
        &self,
        tenant: String,
        filter: MemberFilter,
        tx: mpsc::Sender<Result<ListSegmentMembersResponse, tonic::Status>>,
    ) -> Result<(), ServiceError> {
        let policy = self.effective_policy(&tenant).await?;
        let times = RunTimes::of(self.latest_run(&tenant).await?.as_ref());
        // Patches (an incremental run's customers) merge into the chunks' customer order.
        let patches = queries::patches(&self.db, &tenant)
            .await
            .map_err(ServiceError::internal)?
            .into_iter()
            .map(|(id, score)| Ok((id, decode_patch(&score)?)))
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let mut patches = patches.into_iter().peekable();
        let mut sender = MemberSender {
            tx: &tx,
            members: Vec::with_capacity(filter.chunk_size),
            filter: &filter,
            policy: &policy,
        };
        let mut next_chunk = 0;
        let mut ordered = Vec::new();
        loop {
            let page = queries::chunks(&self.db, &tenant, next_chunk, 10)
                .await
                .map_err(ServiceError::internal)?;
            let done = page.len() < 10;
            for (chunk_no, chunk) in page {
                next_chunk = chunk_no + 1;
                for s in decode_chunk(&chunk.scores)? {
                    while let Some((_, patch)) = patches.next_if(|(id, _)| *id < s.customer_id) {
                        ordered.extend(patch.map(|p| (p, times.latest)));
                    }
                    match patches.next_if(|(id, _)| *id == s.customer_id) {
                        Some((_, patch)) => ordered.extend(patch.map(|p| (p, times.latest))),
                        None => ordered.push((s, times.full)),
                    }
                }
                if !sender.send(ordered.drain(..)).await {
                    return Ok(()); // the caller went away
                }
            }
            if done {
                break;
            }
        }
        // Customers first scored by an incremental run, after every chunk's.
        let rest = patches.filter_map(|(_, p)| p.map(|p| (p, times.latest)));
        if sender.send(rest).await {
            sender.flush().await;
        }
        Ok(())
    }

    /// Sizes, grid and history.
    pub(crate) async fn summary(
        &self,
        tenant: &str,
        locale: &str,
        history_limit: i32,
    ) -> Result<GetSegmentSummaryResponse, ServiceError> {
        if !(0..=365).contains(&history_limit) {
            return Err(ServiceError::invalid(
                "history_limit",
                "must be between 0 and 365",
            ));
        }
        let limit = if history_limit == 0 {
            30
        } else {
            i64::from(history_limit)
        };
        let policy = self.effective_policy(tenant).await?;
        let runs = queries::runs(&self.db, tenant, limit)
            .await
            .map_err(ServiceError::internal)?;
        let decode = |run: &RunRow| {
            GetSegmentSummaryResponse::decode(run.summary.as_slice())
                .map_err(ServiceError::internal)
        };
        let mut summary = match runs.first() {
            Some(run) => decode(run)?,
            None => SummaryBuilder::new(&policy.lookup).finish(String::new()),
        };
        name_segments(&mut summary.segments, &policy, locale);
        for run in &runs {
            let past = decode(run)?;
            let mut segments = past.segments;
            name_segments(&mut segments, &policy, locale);
            summary.history.push(SummarySnapshot {
                recompute_id: run.recompute_id.clone(),
                as_of: timestamp_us(run.as_of_us),
                segments,
                lifecycle: past.lifecycle,
            });
        }
        Ok(summary)
    }

    /// Transitions, newest first.
    pub(crate) async fn transitions(
        &self,
        tenant: &str,
        request: ListTransitionsRequest,
    ) -> Result<ListTransitionsResponse, ServiceError> {
        let page = request.page.unwrap_or_default();
        if !(0..=1000).contains(&page.page_size) {
            return Err(ServiceError::invalid(
                "page.page_size",
                "must be between 0 and 1000",
            ));
        }
        let size = if page.page_size == 0 {
            100
        } else {
            i64::from(page.page_size)
        };
        let before = if page.page_token.is_empty() {
            0
        } else {
            page.page_token
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    ServiceError::invalid("page.page_token", "not a token from a previous page")
                })?
        };
        let since_us = match &request.since {
            Some(ts) => winback_platform::time::from_timestamp(ts)
                .ok_or_else(|| ServiceError::invalid("since", "not a valid time"))?
                .timestamp_micros(),
            None => i64::MIN,
        };
        let mut rows = queries::transitions(
            &self.db,
            tenant,
            &request.customer_id,
            since_us,
            before,
            size + 1,
        )
        .await
        .map_err(ServiceError::internal)?;
        let next_page_token = if rows.len() as i64 > size {
            rows.truncate(size as usize);
            rows.last().map(|r| r.seq.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListTransitionsResponse {
            transitions: rows
                .into_iter()
                .map(|r| Transition {
                    customer_id: r.customer_id,
                    from_segment: r.from_segment,
                    to_segment: r.to_segment,
                    from_state: r.from_state,
                    to_state: r.to_state,
                    recompute_id: r.recompute_id,
                    at: timestamp_us(r.at_us),
                })
                .collect(),
            page: Some(PageResponse { next_page_token }),
        })
    }
}

fn name_segments(
    segments: &mut [winback_proto::segmentation::SegmentSize],
    policy: &Effective,
    locale: &str,
) {
    for s in segments {
        s.name = policy.segment_name(&s.segment, locale);
    }
}

/// The as-of times of stored scores: the latest run's (patches) and the last full run's
/// (chunks).
struct RunTimes {
    latest: Option<prost_types::Timestamp>,
    full: Option<prost_types::Timestamp>,
}

impl RunTimes {
    fn of(latest: Option<&RunRow>) -> Self {
        let full_us = latest.and_then(|r| {
            crate::incremental::RunState::decode(r.incremental.as_slice())
                .ok()
                .filter(|state| state.full_as_of_us != 0)
                .map(|state| state.full_as_of_us)
        });
        Self {
            latest: latest.and_then(|r| timestamp_us(r.as_of_us)),
            full: full_us
                .or(latest.map(|r| r.as_of_us))
                .and_then(timestamp_us),
        }
    }
}

/// Sends members that pass the filter, in messages of the requested size.
struct MemberSender<'a> {
    tx: &'a mpsc::Sender<Result<ListSegmentMembersResponse, tonic::Status>>,
    members: Vec<CustomerScore>,
    filter: &'a MemberFilter,
    policy: &'a Effective,
}

impl MemberSender<'_> {
    /// Queues `scores`, sending every full message; false when the caller went away.
    async fn send(
        &mut self,
        scores: impl Iterator<Item = (StoredScore, Option<prost_types::Timestamp>)>,
    ) -> bool {
        for (s, as_of) in scores {
            if !self.filter.keeps(&s) {
                continue;
            }
            self.members
                .push(s.to_proto(self.policy, &self.filter.locale, as_of));
            if self.members.len() == self.filter.chunk_size {
                let full = std::mem::replace(
                    &mut self.members,
                    Vec::with_capacity(self.filter.chunk_size),
                );
                if self
                    .tx
                    .send(Ok(ListSegmentMembersResponse { members: full }))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
        }
        true
    }

    /// Sends what is queued.
    async fn flush(self) {
        if !self.members.is_empty() {
            let _ = self
                .tx
                .send(Ok(ListSegmentMembersResponse {
                    members: self.members,
                }))
                .await;
        }
    }
}
