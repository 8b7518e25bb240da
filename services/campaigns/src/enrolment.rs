//! Enrolment: who joins a campaign, who is held out, and why everyone else is not enrolled.
//! A decision is recorded for every candidate; the running ones carry the reach snapshot
//! their steps send with and are their own step timers.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sea_orm::ConnectionTrait;
use winback_platform::ServiceError;
use winback_platform::db::multi_row_insert;
use winback_proto::campaigns::{
    Campaign, CampaignState, Chain, EnrolAudienceResponse, EnrolmentDecision, EnrolmentState,
    SkipReason, Trigger,
};
use winback_proto::common::{Channel, MessagePurpose};
use winback_proto::events::EnrolmentStarted;
use winback_proto::events::event::Payload;
use winback_proto::profiles::{GetCustomerResponse, GetCustomersRequest};
use winback_proto::segmentation::{GetCustomerScoreRequest, ListSegmentMembersRequest};

use crate::campaigns::audience;
use crate::context::{Campaigns, db_error};
use crate::domain::assign::{Assignment, assign};
use crate::domain::chain::offsets;
use crate::domain::plan::{Reach, consent_bit};
use crate::domain::policy::Policy;
use crate::peers::upstream;
use crate::store::query_in;

/// Someone who might join a campaign.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) customer_id: String,
    pub(crate) segment: String,
    pub(crate) trigger: Trigger,
    /// P(alive) and CLV (minor units) when the caller knows them.
    pub(crate) score: Option<(f64, i64)>,
}

/// What profiles told us about a candidate.
#[derive(Debug, Clone, Default)]
pub(crate) struct Profile {
    pub(crate) name: String,
    pub(crate) locale: String,
    pub(crate) reach: Reach,
    pub(crate) do_not_contact: bool,
    /// Consent and a contact exist on a channel whose contact delivery suppressed.
    pub(crate) suppressed_bits: i64,
    pub(crate) usual_check_minor: i64,
    pub(crate) currency: String,
}

fn profile_of(r: GetCustomerResponse) -> Profile {
    let customer = r.customer.unwrap_or_default();
    let facts = r.facts.unwrap_or_default();
    let mut consent_bits = 0;
    let mut suppressed_bits = 0;
    for c in &facts.channels {
        let channel = Channel::try_from(c.channel).unwrap_or(Channel::Unspecified);
        let mut bits = 0;
        if c.advertising {
            bits |= consent_bit(channel, MessagePurpose::Advertising);
        }
        if c.service {
            bits |= consent_bit(channel, MessagePurpose::Service);
        }
        if !c.has_contact {
            continue;
        }
        if c.suppressed {
            suppressed_bits |= bits;
        } else {
            consent_bits |= bits;
        }
    }
    // Messenger and manager tasks address the customer by id: their consent comes from
    // profiles like any channel's, the contact is always there.
    Profile {
        name: customer.name,
        locale: if customer.locale.is_empty() {
            facts.locale
        } else {
            customer.locale
        },
        reach: Reach {
            email: customer.email,
            phone: customer.phone,
            push_token: customer
                .push_tokens
                .first()
                .map(|t| t.token.clone())
                .unwrap_or_default(),
            time_zone: if customer.time_zone.is_empty() {
                facts.time_zone
            } else {
                customer.time_zone
            },
            consent_bits,
        },
        do_not_contact: facts.do_not_contact,
        suppressed_bits,
        usual_check_minor: facts.average_check_minor,
        currency: facts.currency,
    }
}

/// A campaign ready to enrol into: its variants' names, weights and chains.
pub(crate) struct Plan {
    pub(crate) campaign: Campaign,
    pub(crate) variants: Vec<(String, u32, Chain)>,
    pub(crate) policy: Policy,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("campaign", &self.campaign.campaign_id)
            .finish_non_exhaustive()
    }
}

/// The decision for one candidate before it is stored.
#[derive(Debug)]
struct Decided {
    candidate: Candidate,
    profile: Profile,
    outcome: Result<Assignment, SkipReason>,
}

impl Campaigns {
    /// The campaign with its chains, refusing one that is not active.
    pub(crate) async fn enrolment_plan(
        &self,
        tenant: &str,
        campaign_id: &str,
    ) -> Result<Plan, ServiceError> {
        let campaign = self.campaign(tenant, campaign_id, "campaign_id").await?;
        let state = CampaignState::try_from(campaign.state).unwrap_or_default();
        if state != CampaignState::Active {
            return Err(ServiceError::FailedPrecondition(format!(
                "campaign {campaign_id} is {}; only an active campaign enrols",
                state.as_str_name()
            )));
        }
        let mut variants = Vec::new();
        if campaign.variants.is_empty() {
            let chain = self
                .chain(tenant, &campaign.chain_id, "campaign.chain_id")
                .await?;
            variants.push(("A".to_owned(), 1, chain));
        }
        for v in &campaign.variants {
            let id = if v.chain_id.is_empty() {
                &campaign.chain_id
            } else {
                &v.chain_id
            };
            let chain = self.chain(tenant, id, "campaign.variants.chain_id").await?;
            variants.push((v.name.clone(), v.weight.max(1) as u32, chain));
        }
        Ok(Plan {
            campaign,
            variants,
            policy: self.policy(tenant).await?,
        })
    }

    /// Looks candidates up in profiles, a thousand per call. A candidate profiles does not
    /// know (or erased) is `None`.
    async fn profiles_of(
        &self,
        tenant: &str,
        candidates: &[Candidate],
    ) -> Result<Vec<Option<Profile>>, ServiceError> {
        // GetCustomers takes at most this many ids.
        const IDS_PER_CALL: usize = 1000;
        let client = self.profiles(tenant)?;
        let mut profiles: HashMap<String, Profile> = HashMap::with_capacity(candidates.len());
        for chunk in candidates.chunks(IDS_PER_CALL) {
            let found = client
                .clone()
                .get_customers(GetCustomersRequest {
                    customer_ids: chunk.iter().map(|c| c.customer_id.clone()).collect(),
                })
                .await
                .map_err(|s| upstream("profiles.GetCustomers", &s))?
                .into_inner();
            for r in found.customers {
                let Some(customer) = r.customer.as_ref() else {
                    continue;
                };
                if !customer.erased {
                    profiles.insert(customer.customer_id.clone(), profile_of(r));
                }
            }
        }
        Ok(candidates
            .iter()
            .map(|c| profiles.remove(&c.customer_id))
            .collect())
    }

    /// Decides and records every candidate (unknown customers are left out). Returns the
    /// decisions of the known ones, in order.
    pub(crate) async fn enrol(
        &self,
        tenant: &str,
        plan: &Plan,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<EnrolmentDecision>, ServiceError> {
        let profiles = self.profiles_of(tenant, &candidates).await?;
        let audience = audience(&plan.campaign);
        let floors = audience.min_p_alive > 0.0 || audience.min_clv_minor > 0;
        let mut known = Vec::new();
        for (candidate, profile) in candidates.into_iter().zip(profiles) {
            if let Some(profile) = profile {
                known.push((candidate, profile));
            }
        }
        if floors {
            let mut segmentation = self.segmentation(tenant)?;
            for (c, _) in known.iter_mut().filter(|(c, _)| c.score.is_none()) {
                match segmentation
                    .get_customer_score(GetCustomerScoreRequest {
                        customer_id: c.customer_id.clone(),
                        locale: String::new(),
                    })
                    .await
                {
                    Ok(r) => {
                        let s = r.into_inner().score.unwrap_or_default();
                        c.score = Some((s.p_alive, s.clv.map_or(0, |m| m.amount_minor)));
                        if c.segment.is_empty() {
                            c.segment = s.segment;
                        }
                    }
                    // Not scored yet: nothing to hold against the floors.
                    Err(s) if s.code() == tonic::Code::NotFound => c.score = Some((0.0, 0)),
                    Err(s) => return Err(upstream("segmentation.GetCustomerScore", &s)),
                }
            }
        }
        let now = self.now();
        let (guard, txn) = self.begin_write().await.map_err(db_error)?;
        let history = History::load(&txn, tenant, &known, &plan.policy, now).await?;
        let mut decided = Vec::with_capacity(known.len());
        let mut taken: HashSet<String> = HashSet::new();
        for (candidate, profile) in known {
            let outcome = decide(
                plan, &audience, &candidate, &profile, &history, &taken, tenant,
            );
            if outcome.is_ok() {
                taken.insert(candidate.customer_id.clone());
            }
            decided.push(Decided {
                candidate,
                profile,
                outcome,
            });
        }
        let out = self
            .store_decisions(&txn, tenant, plan, &decided, now)
            .await?;
        txn.commit().await.map_err(db_error)?;
        drop(guard);
        let mut by_state: std::collections::HashMap<&str, u64> = Default::default();
        for d in &decided {
            let state = match &d.outcome {
                Ok(Assignment::Holdout) => "holdout",
                Ok(Assignment::Variant(_)) => "running",
                Err(_) => "skipped",
            };
            *by_state.entry(state).or_default() += 1;
        }
        for (state, n) in by_state {
            winback_platform::metrics::enrolments(tenant, state, n);
        }
        self.wake.notify_waiters();
        Ok(out)
    }

    async fn store_decisions(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        tenant: &str,
        plan: &Plan,
        decided: &[Decided],
        now: DateTime<Utc>,
    ) -> Result<Vec<EnrolmentDecision>, ServiceError> {
        let backend = sea_orm::ConnectionTrait::get_database_backend(txn);
        let now_us = now.timestamp_micros();
        let mut rows = Vec::with_capacity(decided.len());
        let mut out = Vec::with_capacity(decided.len());
        let mut events = Vec::new();
        for d in decided {
            let enrolment_id = uuid::Uuid::now_v7().to_string();
            let (state, skip, variant, chain_id, due_us) = match &d.outcome {
                Ok(Assignment::Holdout) => (
                    EnrolmentState::Holdout,
                    SkipReason::Unspecified,
                    String::new(),
                    plan.campaign.chain_id.clone(),
                    0,
                ),
                Ok(Assignment::Variant(i)) => {
                    let (name, _, chain) = &plan.variants[*i];
                    let first = offsets(&chain.steps).first().copied().unwrap_or_default();
                    (
                        EnrolmentState::Running,
                        SkipReason::Unspecified,
                        name.clone(),
                        chain.chain_id.clone(),
                        (now + first).timestamp_micros(),
                    )
                }
                Err(reason) => (
                    EnrolmentState::Skipped,
                    *reason,
                    String::new(),
                    plan.campaign.chain_id.clone(),
                    0,
                ),
            };
            let enrolled = state != EnrolmentState::Skipped;
            if enrolled {
                events.push((
                    tenant.to_owned(),
                    now,
                    Payload::EnrolmentStarted(EnrolmentStarted {
                        enrolment_id: enrolment_id.clone(),
                        campaign_id: plan.campaign.campaign_id.clone(),
                        customer_id: d.candidate.customer_id.clone(),
                        variant: variant.clone(),
                        holdout: state == EnrolmentState::Holdout,
                    }),
                ));
            }
            let p = &d.profile;
            // Only a running chain keeps contacts: the others never send.
            let keep = state == EnrolmentState::Running;
            let pick = |s: &str| if keep { s.to_owned() } else { String::new() };
            rows.push(vec![
                tenant.into(),
                enrolment_id.clone().into(),
                plan.campaign.campaign_id.clone().into(),
                d.candidate.customer_id.clone().into(),
                variant.clone().into(),
                chain_id.into(),
                i64::from(state as i32).into(),
                i64::from(skip as i32).into(),
                i64::from(plan.campaign.winback).into(),
                d.candidate.segment.clone().into(),
                i64::from(d.candidate.trigger as i32).into(),
                now_us.into(),
                due_us.into(),
                now_us.into(),
                pick(&p.name).into(),
                pick(&p.reach.email).into(),
                pick(&p.reach.phone).into(),
                pick(&p.reach.push_token).into(),
                p.locale.clone().into(),
                p.reach.time_zone.clone().into(),
                p.reach.consent_bits.into(),
                p.usual_check_minor.into(),
                p.currency.clone().into(),
            ]);
            out.push(EnrolmentDecision {
                customer_id: d.candidate.customer_id.clone(),
                enrolment_id: if enrolled {
                    enrolment_id
                } else {
                    String::new()
                },
                holdout: state == EnrolmentState::Holdout,
                variant,
                skip_reason: skip as i32,
            });
        }
        for chunk in rows.chunks(1000) {
            txn.execute_raw(multi_row_insert(
                backend,
                "INSERT INTO enrolments (tenant_id, enrolment_id, campaign_id, customer_id, variant,
                    chain_id, state, skip_reason, winback, segment, trigger_kind, enrolled_at_us,
                    due_at_us, anchor_us, name, email, phone, push_token, locale, time_zone,
                    consent_bits, usual_check_minor, currency)",
                chunk.to_vec(),
            ))
            .await
            .map_err(db_error)?;
        }
        self.outbox
            .append_many(txn, events)
            .await
            .map_err(db_error)?;
        Ok(out)
    }

    /// Enrols the campaign's current audience: members of its segments and lifecycle
    /// states, streamed from segmentation in chunks.
    pub(crate) async fn enrol_audience(
        &self,
        tenant: &str,
        campaign_id: &str,
    ) -> Result<EnrolAudienceResponse, ServiceError> {
        let plan = self.enrolment_plan(tenant, campaign_id).await?;
        let audience = audience(&plan.campaign);
        if audience.segments.is_empty() && audience.lifecycle_states.is_empty() {
            return Err(ServiceError::FailedPrecondition(format!(
                "campaign {campaign_id} has no segments or lifecycle states to enrol; it enrols on triggers"
            )));
        }
        let mut seen: HashSet<String> = HashSet::new();
        let mut response = EnrolAudienceResponse::default();
        let mut requests = Vec::new();
        if !audience.segments.is_empty() {
            requests.push(ListSegmentMembersRequest {
                segments: audience.segments.clone(),
                chunk_size: 500,
                ..ListSegmentMembersRequest::default()
            });
        }
        if !audience.lifecycle_states.is_empty() {
            requests.push(ListSegmentMembersRequest {
                lifecycle_states: audience.lifecycle_states.clone(),
                chunk_size: 500,
                ..ListSegmentMembersRequest::default()
            });
        }
        for request in requests {
            let mut members = self
                .segmentation(tenant)?
                .list_segment_members(request)
                .await
                .map_err(|s| upstream("segmentation.ListSegmentMembers", &s))?
                .into_inner();
            while let Some(chunk) = members.next().await {
                let chunk = chunk.map_err(|s| upstream("segmentation.ListSegmentMembers", &s))?;
                let candidates: Vec<Candidate> = chunk
                    .members
                    .into_iter()
                    .filter(|m| seen.insert(m.customer_id.clone()))
                    .map(|m| Candidate {
                        score: Some((m.p_alive, m.clv.as_ref().map_or(0, |c| c.amount_minor))),
                        customer_id: m.customer_id,
                        segment: m.segment,
                        trigger: Trigger::SegmentEntered,
                    })
                    .collect();
                for d in self.enrol(tenant, &plan, candidates).await? {
                    count(&mut response, &d);
                }
            }
        }
        Ok(response)
    }

    /// Enrols the given customers; an unknown customer id is NOT_FOUND and nothing is stored.
    pub(crate) async fn enrol_customers(
        &self,
        tenant: &str,
        campaign_id: &str,
        customer_ids: Vec<String>,
        trigger: i32,
    ) -> Result<Vec<EnrolmentDecision>, ServiceError> {
        if customer_ids.is_empty() || customer_ids.len() > 1000 {
            return Err(ServiceError::invalid(
                "customer_ids",
                "between 1 and 1000 customer ids are required",
            ));
        }
        if let Some(i) = customer_ids.iter().position(|c| c.trim().is_empty()) {
            return Err(ServiceError::invalid(format!("customer_ids[{i}]"), "empty"));
        }
        let trigger = Trigger::try_from(trigger)
            .map_err(|_| ServiceError::invalid("trigger", "unknown trigger"))?;
        let plan = self.enrolment_plan(tenant, campaign_id).await?;
        let candidates: Vec<Candidate> = customer_ids
            .iter()
            .map(|id| Candidate {
                customer_id: id.clone(),
                segment: String::new(),
                trigger,
                score: None,
            })
            .collect();
        // Unknown customers first, so nothing is stored for a request that names one.
        let profiles = self.profiles_of(tenant, &candidates).await?;
        if let Some(i) = profiles.iter().position(Option::is_none) {
            return Err(ServiceError::not_found_at(
                "customer",
                &customer_ids[i],
                format!("customer_ids[{i}]"),
            ));
        }
        self.enrol(tenant, &plan, candidates).await
    }
}

/// Tallies a decision into an EnrolAudience answer.
fn count(response: &mut EnrolAudienceResponse, d: &EnrolmentDecision) {
    let reason = SkipReason::try_from(d.skip_reason).unwrap_or_default();
    if reason != SkipReason::Unspecified {
        let name = reason
            .as_str_name()
            .trim_start_matches("SKIP_REASON_")
            .to_lowercase();
        *response.skipped.entry(name).or_default() += 1;
    } else if d.holdout {
        response.held_out += 1;
    } else {
        response.enrolled += 1;
    }
}

/// What the candidates did before: chains they are in, win-back chains within the cap's
/// window, returns within the cool-down.
#[derive(Debug, Default)]
struct History {
    in_chain: HashSet<String>,
    chains_in_window: HashMap<String, i64>,
    cooling_down: HashSet<String>,
}

impl History {
    async fn load(
        txn: &sea_orm::DatabaseTransaction,
        tenant: &str,
        known: &[(Candidate, Profile)],
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Result<Self, ServiceError> {
        let mut h = Self::default();
        let ids: Vec<String> = known.iter().map(|(c, _)| c.customer_id.clone()).collect();
        if ids.is_empty() {
            return Ok(h);
        }
        let holdout_until = (now - policy.max_chain_span).timestamp_micros();
        let window_start = (now - policy.chain_window).timestamp_micros();
        let cooldown_start = (now - policy.cooldown_after_return).timestamp_micros();
        let rows = query_in(
            txn,
            "SELECT customer_id, state, winback, enrolled_at_us FROM enrolments
             WHERE tenant_id = $1 AND customer_id IN ({list})
               AND (state = $2 OR (state = $3 AND enrolled_at_us > $4) OR enrolled_at_us > $5)",
            vec![
                tenant.into(),
                i64::from(EnrolmentState::Running as i32).into(),
                i64::from(EnrolmentState::Holdout as i32).into(),
                holdout_until.into(),
                window_start.into(),
            ],
            &ids,
        )
        .await
        .map_err(db_error)?;
        for row in &rows {
            let customer: String = row.try_get("", "customer_id").map_err(db_error)?;
            let state: i64 = row.try_get("", "state").map_err(db_error)?;
            let winback: i64 = row.try_get("", "winback").map_err(db_error)?;
            let at: i64 = row.try_get("", "enrolled_at_us").map_err(db_error)?;
            let state = i32::try_from(state).unwrap_or_default();
            if state == EnrolmentState::Running as i32
                || (state == EnrolmentState::Holdout as i32 && at > holdout_until)
            {
                h.in_chain.insert(customer.clone());
            }
            // Held-out customers got nothing: they do not use up the chain cap.
            let touched = ![
                EnrolmentState::Holdout as i32,
                EnrolmentState::Skipped as i32,
            ]
            .contains(&state);
            if winback != 0 && touched && at > window_start {
                *h.chains_in_window.entry(customer).or_default() += 1;
            }
        }
        // A return through a win-back: a treated enrolment's conversion.
        let rows = query_in(
            txn,
            "SELECT DISTINCT v.customer_id FROM conversions v
             JOIN enrolments e ON e.tenant_id = v.tenant_id AND e.enrolment_id = v.enrolment_id
             WHERE v.tenant_id = $1 AND v.placed_at_us > $2 AND v.customer_id IN ({list})
               AND e.winback = 1 AND e.variant <> ''",
            vec![tenant.into(), cooldown_start.into()],
            &ids,
        )
        .await
        .map_err(db_error)?;
        for row in &rows {
            h.cooling_down
                .insert(row.try_get("", "customer_id").map_err(db_error)?);
        }
        Ok(h)
    }
}

/// The decision for one candidate, in the order a person would explain it.
fn decide(
    plan: &Plan,
    audience: &winback_proto::campaigns::Audience,
    c: &Candidate,
    p: &Profile,
    h: &History,
    taken: &HashSet<String>,
    tenant: &str,
) -> Result<Assignment, SkipReason> {
    if p.do_not_contact {
        return Err(SkipReason::RefusedContact);
    }
    if let Some((p_alive, clv)) = c.score
        && (p_alive < audience.min_p_alive || clv < audience.min_clv_minor)
    {
        return Err(SkipReason::LtvTooLow);
    }
    if h.in_chain.contains(&c.customer_id) || taken.contains(&c.customer_id) {
        return Err(SkipReason::AlreadyInChain);
    }
    if plan.campaign.winback {
        if h.cooling_down.contains(&c.customer_id) {
            return Err(SkipReason::Cooldown);
        }
        if h.chains_in_window.get(&c.customer_id).copied().unwrap_or(0)
            >= plan.policy.max_chains_per_window
        {
            return Err(SkipReason::Capped);
        }
    }
    // Reachable on some step of some variant: consent for the step's purpose and a contact.
    let mut reachable = false;
    let mut suppressed = false;
    for (_, _, chain) in &plan.variants {
        for step in &chain.steps {
            let purpose = match MessagePurpose::try_from(step.purpose) {
                Ok(MessagePurpose::Service) => MessagePurpose::Service,
                _ => MessagePurpose::Advertising,
            };
            for choice in &step.channels {
                let channel = Channel::try_from(choice.channel).unwrap_or_default();
                if p.reach.contact(channel).is_some() && p.reach.allows(channel, purpose) {
                    reachable = true;
                }
                if p.suppressed_bits & consent_bit(channel, purpose) != 0 {
                    suppressed = true;
                }
            }
        }
    }
    if !reachable {
        return Err(if suppressed {
            SkipReason::Suppressed
        } else {
            SkipReason::NoConsent
        });
    }
    let weights: Vec<u32> = plan.variants.iter().map(|(_, w, _)| *w).collect();
    // A seeded campaign splits the same way in every run, in any tenant (a rerun of a shop
    // gets a new tenant id too); otherwise by tenant and campaign id.
    let (scope, seed) = if plan.campaign.assignment_seed.is_empty() {
        (tenant, plan.campaign.campaign_id.as_str())
    } else {
        ("", plan.campaign.assignment_seed.as_str())
    };
    Ok(assign(
        scope,
        seed,
        &c.customer_id,
        plan.campaign.holdout_percent.clamp(0, 50) as u32,
        &weights,
    ))
}
