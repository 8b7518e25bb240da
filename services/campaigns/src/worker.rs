//! The step workers: claim due enrolments, decide each step, issue the coupons (one batch
//! per offer template), send (one batch per tenant, falling back to the next channel when a
//! contact is suppressed), and record every outcome in one commit. Coupons and sends carry
//! the key `enrolment:step`, so a step repeated after a crash gets back the coupon and the
//! message it already had: never two.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ConnectionTrait, DbBackend};
use tokio_util::sync::CancellationToken;
use winback_platform::ServiceError;
use winback_platform::clock::{next_move, wall_micros};
use winback_platform::db::{multi_row_insert, value_rows};
use winback_platform::time::from_timestamp;
use winback_proto::campaigns::{Chain, EnrolmentState, Step};
use winback_proto::common::{Channel, MessagePurpose};
use winback_proto::delivery::{
    AddSuppressionRequest, AddSuppressionsRequest, Recipient, SendBatchRequest, SendRequest,
    Suppression,
};
use winback_proto::events::event::Payload;
use winback_proto::events::{EnrolmentEnded, StepExecuted};
use winback_proto::offers::{CouponRecipient, IssueCouponsRequest, NextOffersRequest};

use crate::context::{Campaigns, db_error, time};
use crate::domain::chain::{is_marketing, offsets};
use crate::domain::plan::{Decision, Reach, StepView, decide};
use crate::peers::upstream;
use crate::store::{execute, query, query_in};

const COLUMNS: &str = "tenant_id, enrolment_id, campaign_id, customer_id, variant, chain_id,
    segment, enrolled_at_us, next_step, due_at_us, anchor_us, name, email, phone, push_token,
    locale, time_zone, consent_bits, coupon_code, coupon_expires_at_us";

/// A claimed enrolment whose step is due.
#[derive(Debug, Clone)]
struct Due {
    tenant_id: String,
    enrolment_id: String,
    campaign_id: String,
    customer_id: String,
    variant: String,
    chain_id: String,
    segment: String,
    enrolled_at: DateTime<Utc>,
    step: usize,
    due_at: DateTime<Utc>,
    name: String,
    locale: String,
    reach: Reach,
    coupon_code: String,
    coupon_expires_at: Option<DateTime<Utc>>,
}

impl Due {
    fn from_row(r: &sea_orm::QueryResult) -> Result<Self, sea_orm::DbErr> {
        let s = |c: &str| r.try_get::<String>("", c);
        let i = |c: &str| r.try_get::<i64>("", c);
        let expires = i("coupon_expires_at_us")?;
        Ok(Self {
            tenant_id: s("tenant_id")?,
            enrolment_id: s("enrolment_id")?,
            campaign_id: s("campaign_id")?,
            customer_id: s("customer_id")?,
            variant: s("variant")?,
            chain_id: s("chain_id")?,
            segment: s("segment")?,
            enrolled_at: time(i("enrolled_at_us")?),
            step: usize::try_from(i("next_step")?).unwrap_or(0),
            due_at: time(i("due_at_us")?),
            name: s("name")?,
            locale: s("locale")?,
            reach: Reach {
                email: s("email")?,
                phone: s("phone")?,
                push_token: s("push_token")?,
                time_zone: s("time_zone")?,
                consent_bits: i("consent_bits")?,
            },
            coupon_code: s("coupon_code")?,
            coupon_expires_at: (expires != 0).then(|| time(expires)),
        })
    }

    fn key(&self) -> String {
        format!("{}:{}", self.enrolment_id, self.step)
    }
}

/// How one claimed step ends in this round.
#[derive(Debug, Clone)]
struct Ending {
    outcome: &'static str,
    /// Next due time (the same step when deferred, the next one otherwise); `None` when the
    /// enrolment ends.
    next_due: Option<DateTime<Utc>>,
    advance: bool,
    channel: Channel,
    offer_template_id: String,
    coupon: Option<(String, DateTime<Utc>)>,
    message_id: String,
    /// Set when the enrolment ends: (reason, next state).
    end: Option<(&'static str, &'static str)>,
    marketing_touch: bool,
    /// Why a failed step failed.
    failure_reason: String,
}

impl Ending {
    fn new(outcome: &'static str) -> Self {
        Self {
            outcome,
            next_due: None,
            advance: true,
            channel: Channel::Unspecified,
            offer_template_id: String::new(),
            coupon: None,
            message_id: String::new(),
            failure_reason: String::new(),
            end: None,
            marketing_touch: false,
        }
    }
}

/// How an enrolment row changes after its step: id, next step, due, anchor, state, end
/// reason, ended at, next state, coupon code, coupon expiry.
type Advance = (String, i64, i64, i64, i64, String, i64, String, String, i64);

/// A step on its way to delivery.
#[derive(Debug)]
struct Sending {
    index: usize,
    channels: Vec<(Channel, String)>,
    tried: usize,
    coupon: Option<(String, DateTime<Utc>)>,
    offer_template_id: String,
    /// Delivery's refusal on each channel tried, in order.
    refusals: Vec<String>,
}

/// The grace after the last step before a chain is judged (opened, clicked, nothing).
const FINISH_GRACE_HOURS: i64 = 72;

impl Campaigns {
    /// Runs until `shutdown`: drains enrolment requests, then executes due steps; sleeps for
    /// the poll interval (or until woken) when there is nothing to do.
    pub(crate) async fn run_worker(self, shutdown: CancellationToken) {
        let idle = StdDuration::from_millis(self.config.poll_interval_ms);
        // A clock moved by hand (tests, the demo) makes steps due at once: look then.
        let mut moves = self.clock.moves();
        while !shutdown.is_cancelled() {
            let mut busy = false;
            match self.drain_enrolment_requests().await {
                Ok(n) => busy |= n > 0,
                Err(e) => tracing::warn!(error = %e, "enrolment requests failed; retrying"),
            }
            match self.run_due_steps().await {
                Ok(n) => busy |= n > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "step batch failed; its steps run again after the lease")
                }
            }
            if !busy {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(idle) => {}
                    _ = self.wake.notified() => {}
                    _ = next_move(&mut moves) => {}
                }
            }
        }
    }

    /// Claims and executes one batch of due steps; returns how many were claimed.
    pub(crate) async fn run_due_steps(&self) -> Result<usize, ServiceError> {
        let batch = self.claim().await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.len();
        let mut by_tenant: BTreeMap<String, Vec<Due>> = BTreeMap::new();
        for d in batch {
            by_tenant.entry(d.tenant_id.clone()).or_default().push(d);
        }
        for (tenant, due) in by_tenant {
            self.execute_tenant(&tenant, due).await?;
        }
        Ok(n)
    }

    async fn claim(&self) -> Result<Vec<Due>, ServiceError> {
        let now_us = self.now().timestamp_micros();
        let wall = wall_micros();
        let lease = wall + i64::try_from(self.config.lease_ms).unwrap_or(60_000) * 1000;
        let lock = if self.db.get_database_backend() == DbBackend::Postgres {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        // Idle workers look often: a read says whether anything is due before the write
        // lock is taken (on SQLite an empty claim still held the single writer for a
        // commit, delaying the event consumers and enrolment behind it).
        let anything_due = query(
            &self.db,
            "SELECT 1 AS due FROM enrolments WHERE state = $1 AND due_at_us <= $2 AND lease_until_us < $3 LIMIT 1",
            vec![
                i64::from(EnrolmentState::Running as i32).into(),
                now_us.into(),
                wall.into(),
            ],
        )
        .await
        .map_err(db_error)?;
        if anything_due.is_empty() {
            return Ok(Vec::new());
        }
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        let rows = query(
            &txn,
            &format!(
                "WITH due AS (
                   SELECT e.tenant_id AS due_tenant, e.enrolment_id AS due_id FROM enrolments e
                   WHERE e.state = $2 AND e.due_at_us <= $3 AND e.lease_until_us < $4
                     AND EXISTS (SELECT 1 FROM campaigns c WHERE c.tenant_id = e.tenant_id
                                 AND c.campaign_id = e.campaign_id AND c.state = 2)
                   ORDER BY e.due_at_us LIMIT $5 {lock})
                 UPDATE enrolments SET lease_until_us = $1 FROM due
                 WHERE enrolments.tenant_id = due.due_tenant AND enrolments.enrolment_id = due.due_id
                 RETURNING {COLUMNS}"
            ),
            vec![
                lease.into(),
                i64::from(EnrolmentState::Running as i32).into(),
                now_us.into(),
                wall.into(),
                i64::from(self.config.claim_batch).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        rows.iter()
            .map(Due::from_row)
            .collect::<Result<_, _>>()
            .map_err(db_error)
    }

    async fn execute_tenant(&self, tenant: &str, due: Vec<Due>) -> Result<(), ServiceError> {
        let now = self.now();
        let policy = self.policy(tenant).await?;
        let mut chains: HashMap<String, Chain> = HashMap::new();
        for d in &due {
            if !chains.contains_key(&d.chain_id) {
                let chain = self.chain(tenant, &d.chain_id, "chain_id").await?;
                chains.insert(d.chain_id.clone(), chain);
            }
        }
        let reactions = self.reactions_of(tenant, &due).await?;
        let touches = self.recent_touches(tenant, &due, now).await?;
        let pending = self.pending_outcomes(tenant, &due).await?;

        let mut endings: Vec<Option<Ending>> = vec![None; due.len()];
        let mut sendings = Vec::new();
        let mut finishing = Vec::new();
        for (i, d) in due.iter().enumerate() {
            let Some(chain) = chains.get(&d.chain_id) else {
                continue;
            };
            let Some(step) = chain.steps.get(d.step) else {
                finishing.push(i);
                continue;
            };
            let (opened, clicked) = reactions.get(&d.enrolment_id).copied().unwrap_or_default();
            let previous_had_offer = d.step > 0
                && chain.steps.get(d.step - 1).is_some_and(|p| {
                    !p.offer_template_id.is_empty() || !p.offer_ladder_id.is_empty()
                });
            let first_due = pending
                .get(&d.enrolment_id)
                .map_or(d.due_at, |(due, _)| *due);
            let view = StepView {
                step,
                now,
                due_at: d.due_at,
                first_due_at: first_due,
                reach: &d.reach,
                opened,
                clicked,
                previous_coupon_expires_at: if previous_had_offer {
                    d.coupon_expires_at
                } else {
                    None
                },
                recent_touches: touches.get(&d.customer_id).map_or(&[], Vec::as_slice),
            };
            match decide(&view, &policy) {
                Decision::Skip(outcome) => {
                    endings[i] = Some(self.after(chain, d, Ending::new(outcome), now));
                }
                Decision::Defer { outcome, until } => {
                    endings[i] = Some(Ending {
                        next_due: Some(until),
                        advance: false,
                        ..Ending::new(outcome)
                    });
                }
                Decision::Send(channels) => sendings.push(Sending {
                    index: i,
                    channels,
                    tried: 0,
                    coupon: None,
                    refusals: Vec::new(),
                    offer_template_id: pending
                        .get(&d.enrolment_id)
                        .map(|(_, t)| t.clone())
                        .unwrap_or_default(),
                }),
            }
        }
        let mut suppressions = Vec::new();
        for i in finishing {
            let d = &due[i];
            let (opened, clicked) = reactions.get(&d.enrolment_id).copied().unwrap_or_default();
            let chain = &chains[&d.chain_id];
            endings[i] = Some(Self::finish(chain, d, opened, clicked, &mut suppressions));
        }
        self.suppress(tenant, suppressions).await?;
        self.issue_coupons(tenant, &due, &chains, &mut sendings, &mut endings)
            .await?;
        if self.config.crash_point == "after_coupon" && !sendings.is_empty() {
            tracing::error!("campaigns.crash_point = after_coupon: aborting after issuing coupons");
            std::process::abort();
        }
        self.send(tenant, &due, &chains, sendings, &mut endings, now)
            .await?;
        self.record(tenant, &due, &endings, now).await
    }

    /// The next step's due time after step `d.step` ended now (or the chain's finish).
    fn after(&self, chain: &Chain, d: &Due, mut ending: Ending, now: DateTime<Utc>) -> Ending {
        let next = d.step + 1;
        ending.next_due = Some(match chain.steps.get(next) {
            Some(step) => {
                let at = offsets(&chain.steps);
                let from_enrolment =
                    step.delay_from == winback_proto::campaigns::DelayFrom::Enrolment as i32;
                if from_enrolment {
                    (d.enrolled_at + at[next]).max(now)
                } else {
                    now + (at[next] - at[next - 1]).max(Duration::zero())
                }
            }
            None => {
                let grace = chain
                    .steps
                    .iter()
                    .filter_map(|s| s.suppress_if_no_click_within.as_ref())
                    .map(winback_platform::time::from_duration)
                    .fold(Duration::hours(FINISH_GRACE_HOURS), Duration::max);
                now + grace
            }
        });
        ending
    }

    /// The end of a chain: judged by the reactions; the dead flow suppresses non-clickers
    /// (their contacts are added to `suppressions`, sent to delivery for the whole batch).
    fn finish(
        chain: &Chain,
        d: &Due,
        opened: bool,
        clicked: bool,
        suppressions: &mut Vec<Suppression>,
    ) -> Ending {
        let dead_flow = chain
            .steps
            .iter()
            .any(|s| s.suppress_if_no_click_within.is_some());
        let end = if dead_flow && !clicked {
            for (channel, contact) in [
                (Channel::Email, &d.reach.email),
                (Channel::Sms, &d.reach.phone),
                (Channel::Push, &d.reach.push_token),
            ] {
                if !contact.is_empty() {
                    suppressions.push(Suppression {
                        channel: channel as i32,
                        contact: contact.clone(),
                        reason: "dead_cleanup".into(),
                        customer_id: d.customer_id.clone(),
                        created_at: None,
                        marketing_only: true,
                    });
                }
            }
            ("no_click_suppressed", "dead_suppressed")
        } else if opened || clicked {
            ("chain_finished", "hot_sleeping")
        } else {
            ("chain_finished", "deep_sleep")
        };
        Ending {
            end: Some(end),
            ..Ending::new("finished")
        }
    }

    /// Suppresses the dead flow's non-clickers, a batch per call. A contact delivery will
    /// not take (malformed) must not hold the chains' ends back: a refused batch is sent
    /// again one by one and the refusals are logged; an unavailable delivery retries the
    /// whole batch of steps.
    async fn suppress(
        &self,
        tenant: &str,
        suppressions: Vec<Suppression>,
    ) -> Result<(), ServiceError> {
        if suppressions.is_empty() {
            return Ok(());
        }
        let unavailable = |s: &tonic::Status| {
            matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            )
        };
        let mut delivery = self.delivery(tenant)?;
        for chunk in suppressions.chunks(1000) {
            let batch = delivery
                .add_suppressions(AddSuppressionsRequest {
                    suppressions: chunk.to_vec(),
                })
                .await;
            match batch {
                Ok(_) => continue,
                Err(s) if unavailable(&s) => return Err(upstream("delivery.AddSuppressions", &s)),
                Err(_) => {}
            }
            for suppression in chunk {
                let customer = suppression.customer_id.clone();
                let added = delivery
                    .add_suppression(AddSuppressionRequest {
                        suppression: Some(suppression.clone()),
                    })
                    .await;
                match added {
                    Ok(_) => {}
                    Err(s) if unavailable(&s) => {
                        return Err(upstream("delivery.AddSuppression", &s));
                    }
                    Err(s) => {
                        tracing::warn!(customer = %customer, error = %s.message(), "dead-customer suppression refused");
                    }
                }
            }
        }
        Ok(())
    }

    /// Issues the coupons of the steps that carry an offer, one IssueCoupons per template
    /// and campaign. A ladder step first asks offers for each customer's next rung (one
    /// NextOffers per ladder) and records the rungs chosen, so a repeat asks for the same.
    async fn issue_coupons(
        &self,
        tenant: &str,
        due: &[Due],
        chains: &HashMap<String, Chain>,
        sendings: &mut Vec<Sending>,
        endings: &mut [Option<Ending>],
    ) -> Result<(), ServiceError> {
        let step_of = |s: &Sending| -> Option<&Step> {
            let d = &due[s.index];
            chains.get(&d.chain_id)?.steps.get(d.step)
        };
        let mut offers = None;
        let mut by_ladder: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (k, s) in sendings.iter().enumerate() {
            let Some(step) = step_of(s) else { continue };
            if !step.offer_ladder_id.is_empty() && s.offer_template_id.is_empty() {
                by_ladder
                    .entry(step.offer_ladder_id.clone())
                    .or_default()
                    .push(k);
            }
        }
        let mut chosen = Vec::new();
        for (ladder, ks) in by_ladder {
            let client = match &mut offers {
                Some(c) => c,
                None => offers.insert(self.offers(tenant)?),
            };
            for chunk in ks.chunks(1000) {
                let next = client
                    .next_offers(NextOffersRequest {
                        ladder_id: ladder.clone(),
                        customer_ids: chunk
                            .iter()
                            .map(|k| due[sendings[*k].index].customer_id.clone())
                            .collect(),
                    })
                    .await
                    .map_err(|st| upstream("offers.NextOffers", &st))?
                    .into_inner()
                    .offers;
                for (k, offer) in chunk.iter().zip(next) {
                    if let Some(t) = offer.template.filter(|_| !offer.exhausted) {
                        sendings[*k].offer_template_id = t.template_id;
                        chosen.push(*k);
                    }
                }
            }
        }
        self.remember_rungs(
            tenant,
            chosen.iter().map(|k| {
                (
                    &due[sendings[*k].index],
                    sendings[*k].offer_template_id.as_str(),
                )
            }),
        )
        .await?;
        // (template, ladder) → sendings.
        let mut by_template: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for (k, s) in sendings.iter().enumerate() {
            let Some(step) = step_of(s) else { continue };
            if !step.offer_template_id.is_empty() {
                by_template
                    .entry((step.offer_template_id.clone(), String::new()))
                    .or_default()
                    .push(k);
            } else if step.offer_ladder_id.is_empty() {
                continue;
            } else if s.offer_template_id.is_empty() {
                endings[s.index] = Some(Ending::new("skipped_no_offer"));
            } else {
                by_template
                    .entry((s.offer_template_id.clone(), step.offer_ladder_id.clone()))
                    .or_default()
                    .push(k);
            }
        }
        for ((template, ladder), ks) in by_template {
            let client = match &mut offers {
                Some(c) => c,
                None => offers.insert(self.offers(tenant)?),
            };
            // One campaign per call keeps budgets and attribution right.
            let mut by_campaign: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for k in ks {
                by_campaign
                    .entry(due[sendings[k].index].campaign_id.clone())
                    .or_default()
                    .push(k);
            }
            for (campaign_id, ks) in by_campaign {
                let recipients = ks
                    .iter()
                    .map(|k| {
                        let d = &due[sendings[*k].index];
                        CouponRecipient {
                            customer_id: d.customer_id.clone(),
                            idempotency_key: d.key(),
                        }
                    })
                    .collect();
                match client
                    .issue_coupons(IssueCouponsRequest {
                        template_id: template.clone(),
                        recipients,
                        campaign_id,
                        ladder_id: ladder.clone(),
                    })
                    .await
                {
                    Ok(r) => {
                        for (k, c) in ks.iter().zip(r.into_inner().coupons) {
                            let expires = c
                                .expires_at
                                .as_ref()
                                .and_then(from_timestamp)
                                .unwrap_or_default();
                            sendings[*k].coupon = Some((c.code, expires));
                            sendings[*k].offer_template_id = template.clone();
                        }
                    }
                    // Budget spent or template archived: the step cannot make its offer.
                    Err(st)
                        if matches!(
                            st.code(),
                            tonic::Code::ResourceExhausted | tonic::Code::FailedPrecondition
                        ) =>
                    {
                        tracing::warn!(template, error = %st.message(), "offer unavailable; steps skipped");
                        for k in ks {
                            endings[sendings[k].index] = Some(Ending::new("skipped_no_offer"));
                        }
                    }
                    Err(st) => return Err(upstream("offers.IssueCoupons", &st)),
                }
            }
        }
        sendings.retain(|s| endings[s.index].is_none());
        Ok(())
    }

    /// Records the ladder rungs chosen for these steps, in one transaction.
    async fn remember_rungs<'a>(
        &self,
        tenant: &str,
        chosen: impl Iterator<Item = (&'a Due, &'a str)>,
    ) -> Result<(), ServiceError> {
        let rows: Vec<Vec<sea_orm::Value>> = chosen
            .map(|(d, template)| {
                vec![
                    tenant.into(),
                    d.enrolment_id.clone().into(),
                    (d.step as i64).into(),
                    "pending".into(),
                    d.due_at.timestamp_micros().into(),
                    template.into(),
                ]
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        let backend = txn.get_database_backend();
        for chunk in rows.chunks(500) {
            let mut insert = multi_row_insert(
                backend,
                "INSERT INTO step_outcomes (tenant_id, enrolment_id, step, outcome, due_at_us, offer_template_id)",
                chunk.to_vec(),
            );
            insert.sql.push_str(
                " ON CONFLICT (tenant_id, enrolment_id, step) DO UPDATE SET offer_template_id = excluded.offer_template_id",
            );
            txn.execute_raw(insert).await.map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)
    }

    /// Sends every step through delivery, in rounds: a contact delivery refuses as
    /// suppressed falls back to the step's next channel.
    async fn send(
        &self,
        tenant: &str,
        due: &[Due],
        chains: &HashMap<String, Chain>,
        mut sendings: Vec<Sending>,
        endings: &mut [Option<Ending>],
        now: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        if sendings.is_empty() {
            return Ok(());
        }
        let mut delivery = self.delivery(tenant)?;
        while !sendings.is_empty() {
            let mut requests = Vec::with_capacity(sendings.len());
            for s in &sendings {
                let d = &due[s.index];
                let step = &chains[&d.chain_id].steps[d.step];
                let (channel, template) = &s.channels[s.tried];
                requests.push(self.send_request(d, step, *channel, template, s.coupon.as_ref()));
            }
            let mut results = Vec::with_capacity(requests.len());
            for chunk in requests.chunks(1000) {
                let r = delivery
                    .send_batch(SendBatchRequest {
                        sends: chunk.to_vec(),
                    })
                    .await
                    .map_err(|st| upstream("delivery.SendBatch", &st))?;
                results.extend(r.into_inner().results);
            }
            let mut again = Vec::new();
            for (mut s, result) in sendings.into_iter().zip(results) {
                let d = &due[s.index];
                let chain = &chains[&d.chain_id];
                let step = &chain.steps[d.step];
                if let Some(message) = result.message {
                    let ending = Ending {
                        channel: s.channels[s.tried].0,
                        offer_template_id: s.offer_template_id.clone(),
                        coupon: s.coupon.clone(),
                        message_id: message.message_id,
                        marketing_touch: is_marketing(step),
                        ..Ending::new("sent")
                    };
                    endings[s.index] = Some(self.after(chain, d, ending, now));
                    continue;
                }
                tracing::debug!(enrolment = %d.enrolment_id, code = result.error_code, error = %result.error, "send refused");
                s.refusals.push(format!(
                    "{}: {}",
                    s.channels[s.tried].0.as_str_name(),
                    result.error
                ));
                s.tried += 1;
                if s.tried < s.channels.len() {
                    again.push(s);
                } else {
                    let outcome = if result.error_code == tonic::Code::FailedPrecondition as i32 {
                        "skipped_no_consent"
                    } else {
                        "failed"
                    };
                    let failure_reason = if outcome == "failed" {
                        let why = s.refusals.join("; ");
                        tracing::warn!(enrolment = %d.enrolment_id, step = d.step, reason = %why, "step failed: delivery refused every channel");
                        why
                    } else {
                        String::new()
                    };
                    let ending = Ending {
                        coupon: s.coupon.clone(),
                        offer_template_id: s.offer_template_id.clone(),
                        failure_reason,
                        ..Ending::new(outcome)
                    };
                    endings[s.index] = Some(self.after(chain, d, ending, now));
                }
            }
            sendings = again;
        }
        Ok(())
    }

    fn send_request(
        &self,
        d: &Due,
        step: &Step,
        channel: Channel,
        template: &str,
        coupon: Option<&(String, DateTime<Utc>)>,
    ) -> SendRequest {
        let now = self.now();
        // The step's own coupon, else the one a reminder reminds of.
        let coupon = coupon.cloned().or_else(|| {
            (!d.coupon_code.is_empty())
                .then(|| (d.coupon_code.clone(), d.coupon_expires_at.unwrap_or(now)))
        });
        let mut variables = serde_json::json!({
            "facts": { "segment": d.segment },
        });
        let coupon_code = coupon.as_ref().map(|(code, _)| code.clone());
        if let Some((code, expires)) = coupon {
            variables["coupon"] = serde_json::json!({
                "code": code,
                // The customer's local time, with the zone named.
                "expires_at": crate::domain::coupon_text::expiry(expires, &d.reach.time_zone),
                "expires_at_utc": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "hours_left": (expires - now).num_hours().max(0),
            });
        }
        let purpose = if is_marketing(step) {
            MessagePurpose::Advertising
        } else {
            MessagePurpose::Service
        };
        let address = if matches!(channel, Channel::Messenger | Channel::ManagerTask) {
            d.customer_id.clone()
        } else {
            String::new()
        };
        SendRequest {
            idempotency_key: d.key(),
            channel: channel as i32,
            template_id: template.to_owned(),
            locale: d.locale.clone(),
            recipient: Some(Recipient {
                customer_id: d.customer_id.clone(),
                email: d.reach.email.clone(),
                phone: d.reach.phone.clone(),
                push_token: d.reach.push_token.clone(),
                address,
                time_zone: d.reach.time_zone.clone(),
                name: d.name.clone(),
            }),
            purpose: purpose as i32,
            variables: Some(json_to_struct(&variables)),
            metadata: [
                ("campaign_id", d.campaign_id.clone()),
                ("enrolment_id", d.enrolment_id.clone()),
                ("variant", d.variant.clone()),
                ("step", d.step.to_string()),
                ("coupon_code", coupon_code.unwrap_or_default()),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            send_after: None,
        }
    }

    /// Opened / clicked anything of the enrolment so far, from delivery's events.
    async fn reactions_of(
        &self,
        tenant: &str,
        due: &[Due],
    ) -> Result<HashMap<String, (bool, bool)>, ServiceError> {
        let ids: Vec<String> = due.iter().map(|d| d.enrolment_id.clone()).collect();
        let rows = query_in(
            &self.db,
            "SELECT enrolment_id, MAX(opened) AS opened, MAX(clicked) AS clicked
             FROM step_reactions WHERE tenant_id = $1 AND enrolment_id IN ({list})
             GROUP BY enrolment_id",
            vec![tenant.into()],
            &ids,
        )
        .await
        .map_err(db_error)?;
        let mut out = HashMap::new();
        for r in &rows {
            let id: String = r.try_get("", "enrolment_id").map_err(db_error)?;
            let opened: i64 = r.try_get("", "opened").map_err(db_error)?;
            let clicked: i64 = r.try_get("", "clicked").map_err(db_error)?;
            // A click implies the message was seen.
            out.insert(id, (opened != 0 || clicked != 0, clicked != 0));
        }
        Ok(out)
    }

    /// Each customer's marketing touches of the last 7 days, oldest first.
    async fn recent_touches(
        &self,
        tenant: &str,
        due: &[Due],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, Vec<DateTime<Utc>>>, ServiceError> {
        let since = (now - Duration::days(7)).timestamp_micros();
        let customers: Vec<String> = due.iter().map(|d| d.customer_id.clone()).collect();
        let rows = query_in(
            &self.db,
            "SELECT customer_id, at_us FROM touches
             WHERE tenant_id = $1 AND at_us > $2 AND customer_id IN ({list})
             ORDER BY at_us",
            vec![tenant.into(), since.into()],
            &customers,
        )
        .await
        .map_err(db_error)?;
        let mut out: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
        for r in &rows {
            let id: String = r.try_get("", "customer_id").map_err(db_error)?;
            let at: i64 = r.try_get("", "at_us").map_err(db_error)?;
            out.entry(id).or_default().push(time(at));
        }
        Ok(out)
    }

    /// Steps already deferred or with a rung chosen: when they were first due, the rung.
    async fn pending_outcomes(
        &self,
        tenant: &str,
        due: &[Due],
    ) -> Result<HashMap<String, (DateTime<Utc>, String)>, ServiceError> {
        let ids: Vec<String> = due.iter().map(|d| d.enrolment_id.clone()).collect();
        let rows = query_in(
            &self.db,
            "SELECT enrolment_id, step, due_at_us, offer_template_id FROM step_outcomes
             WHERE tenant_id = $1 AND enrolment_id IN ({list}) AND executed_at_us = 0",
            vec![tenant.into()],
            &ids,
        )
        .await
        .map_err(db_error)?;
        let steps: HashMap<&str, usize> = due
            .iter()
            .map(|d| (d.enrolment_id.as_str(), d.step))
            .collect();
        let mut out = HashMap::new();
        for r in &rows {
            let id: String = r.try_get("", "enrolment_id").map_err(db_error)?;
            let step: i64 = r.try_get("", "step").map_err(db_error)?;
            if steps.get(id.as_str()).copied() != usize::try_from(step).ok() {
                continue;
            }
            let at: i64 = r.try_get("", "due_at_us").map_err(db_error)?;
            let template: String = r.try_get("", "offer_template_id").map_err(db_error)?;
            out.insert(id, (time(at), template));
        }
        Ok(out)
    }

    /// One commit for the batch: outcomes, the enrolments' next timers, the caps ledger and
    /// the events.
    async fn record(
        &self,
        tenant: &str,
        due: &[Due],
        endings: &[Option<Ending>],
        now: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        let now_us = now.timestamp_micros();
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        let backend = txn.get_database_backend();
        let mut outcomes = Vec::new();
        let mut touches = Vec::new();
        let mut updates: Vec<Advance> = Vec::new();
        let mut events = Vec::new();
        for (d, ending) in due.iter().zip(endings) {
            let Some(e) = ending else { continue };
            let executed = if e.advance { now_us } else { 0 };
            let (coupon_code, coupon_expires) = match &e.coupon {
                Some((code, at)) => (code.clone(), at.timestamp_micros()),
                None => (
                    d.coupon_code.clone(),
                    d.coupon_expires_at.map_or(0, |t| t.timestamp_micros()),
                ),
            };
            if e.end.is_none() {
                outcomes.push(vec![
                    tenant.into(),
                    d.enrolment_id.clone().into(),
                    (d.step as i64).into(),
                    e.outcome.into(),
                    d.due_at.timestamp_micros().into(),
                    executed.into(),
                    i64::from(e.channel as i32).into(),
                    e.offer_template_id.clone().into(),
                    e.coupon
                        .as_ref()
                        .map(|c| c.0.clone())
                        .unwrap_or_default()
                        .into(),
                    e.message_id.clone().into(),
                    e.failure_reason.clone().into(),
                ]);
                events.push((
                    tenant.to_owned(),
                    now,
                    Payload::StepExecuted(StepExecuted {
                        enrolment_id: d.enrolment_id.clone(),
                        campaign_id: d.campaign_id.clone(),
                        customer_id: d.customer_id.clone(),
                        step: d.step as i32,
                        outcome: crate::domain::outcomes::step_result(e.outcome),
                        failure_reason: e.failure_reason.clone(),
                        channel: e.channel as i32,
                        coupon_code: e.coupon.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
                        message_id: e.message_id.clone(),
                    }),
                ));
            }
            if e.marketing_touch {
                touches.push(vec![
                    tenant.into(),
                    d.customer_id.clone().into(),
                    now_us.into(),
                    d.enrolment_id.clone().into(),
                    (d.step as i64).into(),
                ]);
            }
            let (state, ended, reason, next_state) = match e.end {
                Some((reason, next_state)) => {
                    events.push((
                        tenant.to_owned(),
                        now,
                        Payload::EnrolmentEnded(EnrolmentEnded {
                            enrolment_id: d.enrolment_id.clone(),
                            campaign_id: d.campaign_id.clone(),
                            customer_id: d.customer_id.clone(),
                            reason: crate::domain::outcomes::end_reason(reason),
                            next_state: crate::domain::outcomes::after_chain_state(next_state),
                        }),
                    ));
                    (
                        EnrolmentState::Completed as i64,
                        now_us,
                        reason.to_owned(),
                        next_state.to_owned(),
                    )
                }
                None => (
                    EnrolmentState::Running as i64,
                    0,
                    String::new(),
                    String::new(),
                ),
            };
            let next_step = d.step as i64 + i64::from(e.advance && e.end.is_none());
            let anchor = if e.advance { now_us } else { 0 };
            updates.push((
                d.enrolment_id.clone(),
                next_step,
                e.next_due.map_or(0, |t| t.timestamp_micros()),
                anchor,
                state,
                reason,
                ended,
                next_state,
                coupon_code,
                coupon_expires,
            ));
        }
        for chunk in outcomes.chunks(500) {
            let mut stmt = multi_row_insert(
                backend,
                "INSERT INTO step_outcomes (tenant_id, enrolment_id, step, outcome, due_at_us,
                    executed_at_us, channel, offer_template_id, coupon_code, message_id, failure_reason)",
                chunk.to_vec(),
            );
            stmt.sql.push_str(
                " ON CONFLICT (tenant_id, enrolment_id, step) DO UPDATE SET outcome = excluded.outcome,
                  executed_at_us = excluded.executed_at_us, channel = excluded.channel,
                  offer_template_id = excluded.offer_template_id, coupon_code = excluded.coupon_code,
                  message_id = excluded.message_id, failure_reason = excluded.failure_reason",
            );
            txn.execute_raw(stmt).await.map_err(db_error)?;
        }
        for chunk in touches.chunks(500) {
            let mut stmt = multi_row_insert(
                backend,
                "INSERT INTO touches (tenant_id, customer_id, at_us, enrolment_id, step)",
                chunk.to_vec(),
            );
            stmt.sql.push_str(" ON CONFLICT DO NOTHING");
            txn.execute_raw(stmt).await.map_err(db_error)?;
        }
        // Only a still-running enrolment moves on: a purchase or an unsubscribe handled
        // while the step ran has already ended it.
        const SET: &str = "next_step = u.next_step, due_at_us = u.due_at_us,
            anchor_us = CASE WHEN u.anchor_us = 0 THEN enrolments.anchor_us ELSE u.anchor_us END,
            state = u.state, end_reason = u.end_reason, ended_at_us = u.ended_at_us,
            next_state = u.next_state, coupon_code = u.coupon_code,
            coupon_expires_at_us = u.coupon_expires_at_us, lease_until_us = 0";
        if backend == DbBackend::Postgres {
            let text = |f: fn(&Advance) -> String| updates.iter().map(f).collect::<Vec<String>>();
            let int = |f: fn(&Advance) -> i64| updates.iter().map(f).collect::<Vec<i64>>();
            execute(
                &txn,
                &format!(
                    "UPDATE enrolments SET {SET}
                     FROM UNNEST($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                                 $7::text[], $8::bigint[], $9::text[], $10::text[], $11::bigint[])
                       AS u(enrolment_id, next_step, due_at_us, anchor_us, state, end_reason,
                            ended_at_us, next_state, coupon_code, coupon_expires_at_us)
                     WHERE enrolments.tenant_id = $1 AND enrolments.enrolment_id = u.enrolment_id
                       AND enrolments.state = 1"
                ),
                vec![
                    tenant.into(),
                    text(|u| u.0.clone()).into(),
                    int(|u| u.1).into(),
                    int(|u| u.2).into(),
                    int(|u| u.3).into(),
                    int(|u| u.4).into(),
                    text(|u| u.5.clone()).into(),
                    int(|u| u.6).into(),
                    text(|u| u.7.clone()).into(),
                    text(|u| u.8.clone()).into(),
                    int(|u| u.9).into(),
                ],
            )
            .await
            .map_err(db_error)?;
        } else {
            // SQLite: the same join against a VALUES list, 400 enrolments per statement.
            for chunk in updates.chunks(400) {
                let mut values: Vec<sea_orm::Value> = vec![tenant.into()];
                for u in chunk {
                    values.extend([
                        u.0.clone().into(),
                        u.1.into(),
                        u.2.into(),
                        u.3.into(),
                        u.4.into(),
                        u.5.clone().into(),
                        u.6.into(),
                        u.7.clone().into(),
                        u.8.clone().into(),
                        u.9.into(),
                    ]);
                }
                execute(
                    &txn,
                    &format!(
                        "UPDATE enrolments SET {SET}
                         FROM (SELECT column1 AS enrolment_id, column2 AS next_step,
                                 column3 AS due_at_us, column4 AS anchor_us, column5 AS state,
                                 column6 AS end_reason, column7 AS ended_at_us,
                                 column8 AS next_state, column9 AS coupon_code,
                                 column10 AS coupon_expires_at_us
                               FROM (VALUES {})) AS u
                         WHERE enrolments.tenant_id = $1 AND enrolments.enrolment_id = u.enrolment_id
                           AND enrolments.state = 1",
                        value_rows(2, 10, chunk.len())
                    ),
                    values,
                )
                .await
                .map_err(db_error)?;
            }
        }
        self.outbox
            .append_many(&txn, events)
            .await
            .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        let mut by_outcome: HashMap<&str, u64> = HashMap::new();
        for e in endings.iter().flatten() {
            *by_outcome.entry(e.outcome).or_default() += 1;
        }
        for (outcome, n) in by_outcome {
            winback_platform::metrics::steps_executed(tenant, outcome, n);
        }
        Ok(())
    }

    /// Enrols the customers that triggers and segment changes queued; returns how many
    /// requests were handled.
    pub(crate) async fn drain_enrolment_requests(&self) -> Result<usize, ServiceError> {
        // Claimed first, so of several workers (and replicas) one decides each request; a
        // claim left by a crash expires after the lease and the request is decided then.
        // The lease is real time, not the service clock: it is about a worker dying.
        let wall_us = chrono::Utc::now().timestamp_micros();
        let lease_us = i64::try_from(self.config.lease_ms).unwrap_or(60_000) * 1000;
        let rows = {
            let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
            let rows = query(
                &txn,
                "UPDATE enrolment_requests SET claimed_until_us = $1
                 WHERE claimed_until_us < $2 AND seq IN (
                     SELECT seq FROM enrolment_requests WHERE claimed_until_us < $2
                     ORDER BY seq LIMIT 500)
                 RETURNING seq, tenant_id, campaign_id, customer_id, segment, trigger_kind,
                           p_alive, clv_minor",
                vec![(wall_us + lease_us).into(), wall_us.into()],
            )
            .await
            .map_err(db_error)?;
            txn.commit().await.map_err(db_error)?;
            let mut rows = rows;
            // RETURNING keeps no order: decide in the order the requests came.
            rows.sort_by_key(|r| r.try_get::<i64>("", "seq").unwrap_or_default());
            rows
        };
        if rows.is_empty() {
            return Ok(0);
        }
        let mut groups: BTreeMap<(String, String), Vec<crate::enrolment::Candidate>> =
            BTreeMap::new();
        let mut seqs = Vec::with_capacity(rows.len());
        for r in &rows {
            let seq: i64 = r.try_get("", "seq").map_err(db_error)?;
            seqs.push(seq);
            let tenant: String = r.try_get("", "tenant_id").map_err(db_error)?;
            let campaign: String = r.try_get("", "campaign_id").map_err(db_error)?;
            let trigger: i64 = r.try_get("", "trigger_kind").map_err(db_error)?;
            let p_alive: f64 = r.try_get("", "p_alive").map_err(db_error)?;
            let clv: i64 = r.try_get("", "clv_minor").map_err(db_error)?;
            groups
                .entry((tenant, campaign))
                .or_default()
                .push(crate::enrolment::Candidate {
                    customer_id: r.try_get("", "customer_id").map_err(db_error)?,
                    segment: r.try_get("", "segment").map_err(db_error)?,
                    trigger: winback_proto::campaigns::Trigger::try_from(
                        i32::try_from(trigger).unwrap_or_default(),
                    )
                    .unwrap_or_default(),
                    score: (p_alive >= 0.0).then_some((p_alive, clv)),
                });
        }
        for ((tenant, campaign), candidates) in groups {
            match self.enrolment_plan(&tenant, &campaign).await {
                Ok(plan) => {
                    self.enrol(&tenant, &plan, candidates).await?;
                }
                // Paused, completed or gone since: the trigger is dropped.
                Err(ServiceError::FailedPrecondition(_) | ServiceError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        for chunk in seqs.chunks(500) {
            let list = winback_platform::db::placeholders(1, chunk.len());
            execute(
                &txn,
                &format!("DELETE FROM enrolment_requests WHERE seq IN ({list})"),
                chunk.iter().map(|s| sea_orm::Value::from(*s)).collect(),
            )
            .await
            .map_err(db_error)?;
        }
        txn.commit().await.map_err(db_error)?;
        Ok(rows.len())
    }
}

/// JSON as a `google.protobuf.Struct`.
fn json_to_struct(v: &serde_json::Value) -> prost_types::Struct {
    let fields = v
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect()
        })
        .unwrap_or_default();
    prost_types::Struct { fields }
}

fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(v)),
    };
    prost_types::Value { kind: Some(kind) }
}
