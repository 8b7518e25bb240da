//! Consent per channel and purpose, with full history. A "do not contact me" refuses every
//! channel and purpose at once and is remembered until the customer grants consent again.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Value};
use winback_platform::ServiceError;
use winback_proto::common::{Channel, MessagePurpose};
use winback_proto::events::ConsentChanged;
use winback_proto::events::event::Payload;
use winback_proto::profiles::{ConsentRecord, ListConsentHistoryResponse, RecordConsentRequest};

use crate::context::{Profiles, micros, timestamp};
use crate::customers::{consent_record, page_size};
use crate::domain::facts::{CHANNELS, FactsState};
use crate::domain::validate::MAX_CLOCK_SKEW;
use crate::store::rows;

const PURPOSES: [MessagePurpose; 2] = [MessagePurpose::Advertising, MessagePurpose::Service];

/// One consent decision to store.
#[derive(Debug, Clone)]
pub(crate) struct ConsentChange {
    pub(crate) channel: i32,
    pub(crate) purpose: i32,
    pub(crate) granted: bool,
    pub(crate) source: String,
    pub(crate) at_us: i64,
}

/// The refusals a "do not contact me" records.
pub(crate) fn refuse_everything(source: &str, at_us: i64) -> Vec<ConsentChange> {
    CHANNELS
        .iter()
        .flat_map(|&channel| {
            PURPOSES.iter().map(move |&purpose| ConsentChange {
                channel: channel as i32,
                purpose: purpose as i32,
                granted: false,
                source: source.to_owned(),
                at_us,
            })
        })
        .collect()
}

/// The consent changes of one transaction: each is folded into the customer's facts state
/// as it is added, and all are written at the end with a few multi-row statements (the
/// current decision per channel and purpose, the history, the events).
#[derive(Default)]
pub(crate) struct ConsentWrites {
    /// Current decisions, the last one per (customer, channel, purpose): one upsert cannot
    /// touch a row twice.
    current: Vec<Vec<Value>>,
    current_at: HashMap<(String, i32, i32), usize>,
    history: Vec<Vec<Value>>,
    events: Vec<(String, DateTime<Utc>, Payload)>,
}

impl ConsentWrites {
    /// Adds `changes` for one customer and folds them into `state`.
    pub(crate) fn add(
        &mut self,
        now: DateTime<Utc>,
        tenant: &str,
        customer_id: &str,
        state: &mut FactsState,
        changes: &[ConsentChange],
        do_not_contact: bool,
    ) {
        for c in changes {
            let row: Vec<Value> = vec![
                tenant.into(),
                customer_id.into(),
                i64::from(c.channel).into(),
                i64::from(c.purpose).into(),
                i64::from(c.granted).into(),
                c.source.clone().into(),
                c.at_us.into(),
            ];
            match self
                .current_at
                .entry((customer_id.to_owned(), c.channel, c.purpose))
            {
                Entry::Occupied(at) => self.current[*at.get()] = row.clone(),
                Entry::Vacant(slot) => {
                    slot.insert(self.current.len());
                    self.current.push(row.clone());
                }
            }
            self.history.push(row);
            let flags = state.consent.entry(c.channel).or_default();
            if c.purpose == MessagePurpose::Advertising as i32 {
                flags.advertising = c.granted;
            } else {
                flags.service_refused = !c.granted;
            }
            self.events.push((
                tenant.to_owned(),
                now,
                Payload::ConsentChanged(ConsentChanged {
                    customer_id: customer_id.to_owned(),
                    channel: c.channel,
                    purpose: c.purpose,
                    granted: c.granted,
                    source: c.source.clone(),
                    do_not_contact,
                }),
            ));
        }
        if do_not_contact {
            state.do_not_contact = true;
        } else if changes.iter().any(|c| c.granted) {
            // Granting consent again is the customer taking back a "do not contact me".
            state.do_not_contact = false;
        }
    }

    /// Writes everything added, inside the caller's transaction (the facts states are the
    /// caller's to save).
    pub(crate) async fn write(
        self,
        profiles: &Profiles,
        txn: &impl ConnectionTrait,
    ) -> Result<(), ServiceError> {
        if self.history.is_empty() {
            return Ok(());
        }
        rows::insert_many(
            txn,
            "INSERT INTO consents (tenant_id, customer_id, channel, purpose, granted, source, recorded_at_us)",
            "ON CONFLICT (tenant_id, customer_id, channel, purpose) DO UPDATE SET granted = excluded.granted, \
             source = excluded.source, recorded_at_us = excluded.recorded_at_us",
            self.current,
        )
        .await?;
        rows::insert_many(
            txn,
            "INSERT INTO consent_history (tenant_id, customer_id, channel, purpose, granted, source, recorded_at_us)",
            "",
            self.history,
        )
        .await?;
        profiles.outbox.append_many(txn, self.events).await?;
        Ok(())
    }
}

/// The changes one consent request asks for, checked; `prefix` names the request in the
/// fields of an error (`consents[3].` in a batch).
fn requested_changes(
    prefix: &str,
    consent: Option<&ConsentRecord>,
    do_not_contact: bool,
    now_us: i64,
) -> Result<Vec<ConsentChange>, ServiceError> {
    let consent =
        consent.ok_or_else(|| ServiceError::invalid(format!("{prefix}consent"), "is required"))?;
    let at_us = match &consent.recorded_at {
        None => now_us,
        Some(ts) if micros(ts) > now_us + MAX_CLOCK_SKEW.num_microseconds().unwrap_or(0) => {
            return Err(ServiceError::invalid(
                format!("{prefix}consent.recorded_at"),
                "is in the future",
            ));
        }
        Some(ts) => micros(ts),
    };
    if consent.source.is_empty() || consent.source.chars().count() > 64 {
        return Err(ServiceError::invalid(
            format!("{prefix}consent.source"),
            "must be 1 to 64 characters",
        ));
    }
    if do_not_contact {
        return Ok(refuse_everything(&consent.source, at_us));
    }
    if !CHANNELS.iter().any(|c| *c as i32 == consent.channel) {
        return Err(ServiceError::invalid(
            format!("{prefix}consent.channel"),
            "must name a channel",
        ));
    }
    if !PURPOSES.iter().any(|p| *p as i32 == consent.purpose) {
        return Err(ServiceError::invalid(
            format!("{prefix}consent.purpose"),
            "must be advertising or service",
        ));
    }
    Ok(vec![ConsentChange {
        channel: consent.channel,
        purpose: consent.purpose,
        granted: consent.granted,
        source: consent.source.clone(),
        at_us,
    }])
}

/// The record as stored, as the API returns it (a refusal of everything names no channel).
fn stored_record(changes: &[ConsentChange], do_not_contact: bool) -> Option<ConsentRecord> {
    changes.first().map(|c| ConsentRecord {
        channel: if do_not_contact {
            Channel::Unspecified as i32
        } else {
            c.channel
        },
        purpose: if do_not_contact {
            MessagePurpose::Unspecified as i32
        } else {
            c.purpose
        },
        granted: c.granted,
        source: c.source.clone(),
        recorded_at: timestamp(c.at_us),
    })
}

/// Most consent changes one `RecordConsents` call takes.
pub(crate) const MAX_CONSENT_BATCH: usize = 1000;

impl Profiles {
    /// Records one consent change, or a refusal of everything.
    pub(crate) async fn record_consent(
        &self,
        tenant: &str,
        request: RecordConsentRequest,
    ) -> Result<ConsentRecord, ServiceError> {
        self.store_consents(tenant, vec![request], false)
            .await?
            .pop()
            .ok_or_else(|| ServiceError::internal("no consent change"))
    }

    /// Records many customers' consent changes in one transaction, all or none.
    pub(crate) async fn record_consents(
        &self,
        tenant: &str,
        requests: Vec<RecordConsentRequest>,
    ) -> Result<Vec<ConsentRecord>, ServiceError> {
        if requests.is_empty() || requests.len() > MAX_CONSENT_BATCH {
            return Err(ServiceError::invalid(
                "consents",
                format!("must hold 1 to {MAX_CONSENT_BATCH} changes"),
            ));
        }
        self.store_consents(tenant, requests, true).await
    }

    async fn store_consents(
        &self,
        tenant: &str,
        requests: Vec<RecordConsentRequest>,
        batch: bool,
    ) -> Result<Vec<ConsentRecord>, ServiceError> {
        let now_us = self.clock.now().timestamp_micros();
        let prefix = |i: usize| {
            if batch {
                format!("consents[{i}].")
            } else {
                String::new()
            }
        };
        let mut checked = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let changes =
                requested_changes(&prefix(i), r.consent.as_ref(), r.do_not_contact, now_us)?;
            checked.push(changes);
        }
        let mut ids: Vec<String> = requests.iter().map(|r| r.customer_id.clone()).collect();
        ids.sort();
        ids.dedup();
        let (_writer, txn) = self.begin_write().await?;
        let customers = rows::customers(&txn, tenant, &ids).await?;
        for (i, r) in requests.iter().enumerate() {
            match customers.get(&r.customer_id) {
                None => {
                    return Err(ServiceError::not_found_at(
                        "customer",
                        r.customer_id.clone(),
                        format!("{}customer_id", prefix(i)),
                    ));
                }
                Some(c) if c.erased => {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "{}customer_id: customer was erased",
                        prefix(i)
                    )));
                }
                Some(_) => {}
            }
        }
        let mut states = rows::facts_states(&txn, tenant, &ids).await?;
        let mut stored = Vec::with_capacity(requests.len());
        let mut writes = ConsentWrites::default();
        let now = self.clock.now();
        for (r, changes) in requests.iter().zip(&checked) {
            let state = states.entry(r.customer_id.clone()).or_default();
            writes.add(
                now,
                tenant,
                &r.customer_id,
                state,
                changes,
                r.do_not_contact,
            );
            state.updated_at_us = self.now_us();
            stored.extend(stored_record(changes, r.do_not_contact));
        }
        writes.write(self, &txn).await?;
        let touched: Vec<(String, FactsState)> = ids
            .iter()
            .filter_map(|id| states.remove(id).map(|state| (id.clone(), state)))
            .collect();
        rows::save_facts(&txn, tenant, &touched).await?;
        txn.commit().await?;
        self.outbox.notify_committed();
        Ok(stored)
    }

    /// Consent history, newest first.
    pub(crate) async fn consent_history(
        &self,
        tenant: &str,
        customer_id: &str,
        page: Option<winback_proto::common::PageRequest>,
    ) -> Result<ListConsentHistoryResponse, ServiceError> {
        self.customer(tenant, customer_id, "customer_id").await?;
        let page = page.unwrap_or_default();
        let size = page_size(page.page_size)?;
        let before: i64 = if page.page_token.is_empty() {
            i64::MAX
        } else {
            page.page_token
                .parse()
                .map_err(|_| ServiceError::invalid("page.page_token", "malformed page token"))?
        };
        let found = rows::query(
            &self.db,
            "SELECT id, channel, purpose, granted, source, recorded_at_us FROM consent_history \
             WHERE tenant_id = $1 AND customer_id = $2 AND id < $3 ORDER BY id DESC LIMIT $4",
            vec![
                tenant.into(),
                customer_id.into(),
                before.into(),
                (size as i64 + 1).into(),
            ],
        )
        .await?;
        let mut records = Vec::new();
        let mut last_id = 0i64;
        for r in found.iter().take(size as usize) {
            last_id = r.try_get("", "id")?;
            records.push(consent_record(r)?);
        }
        let next = if found.len() as u64 > size {
            last_id.to_string()
        } else {
            String::new()
        };
        Ok(ListConsentHistoryResponse {
            records,
            page: Some(winback_proto::common::PageResponse {
                next_page_token: next,
            }),
        })
    }
}
