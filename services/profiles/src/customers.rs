//! Customers: upsert by the tenant's id, read, list, and erase (right to be forgotten).

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message;
use winback_platform::ServiceError;
use winback_proto::events::CustomerErased;
use winback_proto::events::event::Payload;
use winback_proto::profiles::{
    ConsentRecord, Customer, CustomerFacts, GetCustomerResponse, GetCustomersResponse,
    ListCustomersRequest, ListCustomersResponse, PushToken,
};

use crate::context::{Profiles, micros, timestamp};
use crate::domain::facts::FactsState;
use crate::domain::validate::{self, MAX_BATCH, Violations};
use crate::store::rows::{self, CustomerRow};

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// The fields an upsert's mask may name.
pub(crate) const MASKABLE: &[&str] = &[
    "name",
    "email",
    "phone",
    "locale",
    "time_zone",
    "birthday",
    "tags",
    "push_tokens",
    "attributes",
];

/// Merges an upsert into a stored customer: fields left empty keep their value, unless the
/// mask names them (`exact`).
fn merge(stored: Option<&CustomerRow>, c: &Customer, exact: &[&str], now_us: i64) -> CustomerRow {
    let mut row = stored.cloned().unwrap_or_else(|| CustomerRow {
        customer_id: c.customer_id.clone(),
        push_tokens: "[]".into(),
        tags: "[]".into(),
        attributes: "{}".into(),
        created_at_us: now_us,
        ..CustomerRow::default()
    });
    // A field in the mask is taken as given (empty clears it); others only when set.
    let named = |f: &str| exact.contains(&f);
    let set = |field: &mut String, name: &str, value: &str| {
        if !value.is_empty() || named(name) {
            *field = value.to_owned();
        }
    };
    set(&mut row.name, "name", &c.name);
    set(&mut row.email, "email", &c.email.to_lowercase());
    set(&mut row.phone, "phone", &c.phone);
    set(&mut row.locale, "locale", &c.locale);
    set(&mut row.time_zone, "time_zone", &c.time_zone);
    set(&mut row.birthday, "birthday", &c.birthday);
    if named("attributes") {
        row.attributes = json(&c.attributes.iter().collect::<BTreeMap<_, _>>());
    }
    if !c.push_tokens.is_empty() || named("push_tokens") {
        let tokens: Vec<(&str, &str)> = c
            .push_tokens
            .iter()
            .map(|t| (t.platform.as_str(), t.token.as_str()))
            .collect();
        row.push_tokens = json(&tokens);
    }
    if !c.tags.is_empty() || named("tags") {
        row.tags = json(&c.tags);
    }
    if !c.attributes.is_empty() && !named("attributes") {
        let mut attributes: BTreeMap<String, String> =
            serde_json::from_str(&row.attributes).unwrap_or_default();
        attributes.extend(c.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
        row.attributes = json(&attributes);
    }
    row.updated_at_us = now_us;
    row
}

/// The contact facts of a customer row.
pub(crate) fn apply_contacts(state: &mut FactsState, row: &CustomerRow) {
    state.has_email = !row.email.is_empty();
    state.has_phone = !row.phone.is_empty();
    state.has_push = row.push_tokens != "[]" && !row.push_tokens.is_empty();
    state.time_zone = row.time_zone.clone();
    state.locale = row.locale.clone();
    state.erased = row.erased;
}

/// The customer as the contract shows it.
pub(crate) fn to_proto(row: &CustomerRow) -> Customer {
    let tokens: Vec<(String, String)> = serde_json::from_str(&row.push_tokens).unwrap_or_default();
    Customer {
        customer_id: row.customer_id.clone(),
        name: row.name.clone(),
        email: row.email.clone(),
        phone: row.phone.clone(),
        push_tokens: tokens
            .into_iter()
            .map(|(platform, token)| PushToken { platform, token })
            .collect(),
        locale: row.locale.clone(),
        time_zone: row.time_zone.clone(),
        birthday: row.birthday.clone(),
        tags: serde_json::from_str(&row.tags).unwrap_or_default(),
        attributes: serde_json::from_str(&row.attributes).unwrap_or_default(),
        created_at: timestamp(row.created_at_us),
        updated_at: timestamp(row.updated_at_us),
        erased: row.erased,
    }
}

impl Profiles {
    /// Creates or updates customers, all or nothing.
    pub(crate) async fn upsert_customers(
        &self,
        tenant: &str,
        customers: Vec<Customer>,
        update_mask: Option<prost_types::FieldMask>,
    ) -> Result<(i32, i32), ServiceError> {
        let mut v = Violations::default();
        // No mask means no field is set exactly (not "every field", as for Update calls).
        let exact = match update_mask.filter(|m| !m.paths.is_empty()) {
            Some(mask) => match winback_platform::field_mask::paths(Some(&mask), MASKABLE) {
                Ok(paths) => paths,
                Err(ServiceError::InvalidArgument(bad)) => {
                    v.0.extend(bad);
                    Vec::new()
                }
                Err(other) => return Err(other),
            },
            None => Vec::new(),
        };
        if customers.is_empty() || customers.len() > MAX_BATCH {
            v.add("customers", format!("must hold 1 to {MAX_BATCH} customers"));
        }
        let today = self.clock.now().date_naive();
        let mut seen = HashSet::new();
        for (i, c) in customers.iter().enumerate() {
            validate::customer(&mut v, &format!("customers[{i}]"), c, today);
            if !seen.insert(c.customer_id.as_str()) {
                v.add(
                    format!("customers[{i}].customer_id"),
                    "appears twice in the batch",
                );
            }
        }
        if !v.is_empty() {
            return Err(ServiceError::InvalidArgument(v.0));
        }
        let now_us = self.now_us();
        let ids: Vec<String> = customers.iter().map(|c| c.customer_id.clone()).collect();
        let (_writer, txn) = self.begin_write().await?;
        let stored = rows::customers(&txn, tenant, &ids).await?;
        if let Some((i, _)) = customers
            .iter()
            .enumerate()
            .find(|(_, c)| stored.get(&c.customer_id).is_some_and(|s| s.erased))
        {
            return Err(ServiceError::FailedPrecondition(format!(
                "customers[{i}].customer_id: customer {:?} was erased",
                customers[i].customer_id
            )));
        }
        let merged: Vec<CustomerRow> = customers
            .iter()
            .map(|c| merge(stored.get(&c.customer_id), c, &exact, now_us))
            .collect();
        let mut states = rows::facts_states(&txn, tenant, &ids).await?;
        let facts: Vec<(String, FactsState)> = merged
            .iter()
            .map(|row| {
                let mut state = states.remove(&row.customer_id).unwrap_or_default();
                apply_contacts(&mut state, row);
                state.updated_at_us = now_us;
                (row.customer_id.clone(), state)
            })
            .collect();
        rows::save_customers(&txn, tenant, merged).await?;
        rows::save_facts(&txn, tenant, &facts).await?;
        txn.commit().await?;
        let updated = stored.len() as i32;
        Ok((customers.len() as i32 - updated, updated))
    }

    /// A customer with facts and current consent.
    pub(crate) async fn get_customer(
        &self,
        tenant: &str,
        customer_id: &str,
    ) -> Result<GetCustomerResponse, ServiceError> {
        let row = self.customer(tenant, customer_id, "customer_id").await?;
        let facts = self.facts(tenant, customer_id).await?;
        let consents = rows::query(
            &self.db,
            "SELECT channel, purpose, granted, source, recorded_at_us FROM consents \
             WHERE tenant_id = $1 AND customer_id = $2 ORDER BY channel, purpose",
            vec![tenant.into(), customer_id.into()],
        )
        .await?
        .iter()
        .map(consent_record)
        .collect::<Result<_, _>>()?;
        Ok(GetCustomerResponse {
            customer: Some(to_proto(&row)),
            facts: Some(facts),
            consents,
        })
    }

    /// Many customers at once, each as [`Self::get_customer`] returns one, in the order
    /// asked (an id asked twice comes once); unknown ids come back apart. Three queries
    /// whatever the number of ids: what campaigns' enrolment reads for its candidates.
    pub(crate) async fn get_customers(
        &self,
        tenant: &str,
        ids: Vec<String>,
    ) -> Result<GetCustomersResponse, ServiceError> {
        let mut v = Violations::default();
        if ids.is_empty() || ids.len() > MAX_BATCH {
            v.add("customer_ids", format!("must hold 1 to {MAX_BATCH} ids"));
        }
        for (i, id) in ids.iter().enumerate() {
            validate::id(&mut v, &format!("customer_ids[{i}]"), id);
        }
        if !v.is_empty() {
            return Err(ServiceError::InvalidArgument(v.0));
        }
        let mut asked = HashSet::new();
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| asked.insert(id.clone()))
            .collect();
        let mut customers = rows::customers(&self.db, tenant, &ids).await?;
        let mut facts = rows::encoded_facts_of(&self.db, tenant, &ids).await?;
        let mut consents: HashMap<String, Vec<ConsentRecord>> = HashMap::new();
        for r in rows::consents_of(&self.db, tenant, &ids).await? {
            let id: String = r.try_get("", "customer_id")?;
            consents.entry(id).or_default().push(consent_record(&r)?);
        }
        let mut out = GetCustomersResponse::default();
        for id in ids {
            let (Some(row), Some(encoded)) = (customers.remove(&id), facts.remove(&id)) else {
                out.not_found.push(id);
                continue;
            };
            let mut records = consents.remove(&id).unwrap_or_default();
            records.sort_by_key(|c| (c.channel, c.purpose));
            out.customers.push(GetCustomerResponse {
                customer: Some(to_proto(&row)),
                facts: Some(
                    CustomerFacts::decode(encoded.as_slice()).map_err(ServiceError::internal)?,
                ),
                consents: records,
            });
        }
        Ok(out)
    }

    /// A stored customer, or NOT_FOUND naming `field`.
    pub(crate) async fn customer(
        &self,
        tenant: &str,
        customer_id: &str,
        field: &str,
    ) -> Result<CustomerRow, ServiceError> {
        rows::customers(&self.db, tenant, &[customer_id.to_owned()])
            .await?
            .remove(customer_id)
            .ok_or_else(|| ServiceError::not_found_at("customer", customer_id, field))
    }

    /// The facts of a customer.
    pub(crate) async fn facts(
        &self,
        tenant: &str,
        customer_id: &str,
    ) -> Result<CustomerFacts, ServiceError> {
        let encoded = rows::encoded_facts(&self.db, tenant, customer_id)
            .await?
            .ok_or_else(|| ServiceError::not_found_at("customer", customer_id, "customer_id"))?;
        CustomerFacts::decode(encoded.as_slice()).map_err(ServiceError::internal)
    }

    /// A page of customers.
    pub(crate) async fn list_customers(
        &self,
        tenant: &str,
        req: ListCustomersRequest,
    ) -> Result<ListCustomersResponse, ServiceError> {
        let page = req.page.unwrap_or_default();
        let size = page_size(page.page_size)?;
        let since = req.updated_since.as_ref().map(micros);
        let mut found = rows::list_customers(
            &self.db,
            tenant,
            &page.page_token,
            size + 1,
            &req.tag,
            since,
            req.include_erased,
        )
        .await?;
        let next = if found.len() as u64 > size {
            found.truncate(size as usize);
            found
                .last()
                .map(|c| c.customer_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListCustomersResponse {
            customers: found.iter().map(to_proto).collect(),
            page: Some(winback_proto::common::PageResponse {
                next_page_token: next,
            }),
        })
    }

    /// Erases a customer's personal data; orders stay, tied only to the tenant's id.
    pub(crate) async fn erase_customer(
        &self,
        tenant: &str,
        customer_id: &str,
    ) -> Result<i64, ServiceError> {
        let now_us = self.now_us();
        let (_writer, txn) = self.begin_write().await?;
        let ids = [customer_id.to_owned()];
        let Some(stored) = rows::customers(&txn, tenant, &ids)
            .await?
            .remove(customer_id)
        else {
            return Err(ServiceError::not_found_at(
                "customer",
                customer_id,
                "customer_id",
            ));
        };
        let blank = CustomerRow {
            customer_id: stored.customer_id.clone(),
            push_tokens: "[]".into(),
            tags: "[]".into(),
            attributes: "{}".into(),
            erased: true,
            created_at_us: stored.created_at_us,
            updated_at_us: now_us,
            ..CustomerRow::default()
        };
        let mut state = rows::facts_states(&txn, tenant, &ids)
            .await?
            .remove(customer_id)
            .unwrap_or_default();
        apply_contacts(&mut state, &blank);
        state.updated_at_us = now_us;
        rows::save_customers(&txn, tenant, vec![blank]).await?;
        rows::save_facts(&txn, tenant, &[(customer_id, state)]).await?;
        // Free text a customer typed (searches, complaints, survey answers) is personal.
        rows::exec(
            &txn,
            "UPDATE engagement_events SET detail = '' WHERE tenant_id = $1 AND customer_id = $2",
            vec![tenant.into(), customer_id.into()],
        )
        .await?;
        self.outbox
            .append(
                &txn,
                tenant,
                self.clock.now(),
                Payload::CustomerErased(CustomerErased {
                    customer_id: customer_id.to_owned(),
                }),
            )
            .await?;
        txn.commit().await?;
        self.outbox.notify_committed();
        Ok(now_us)
    }
}

/// A consent row as the contract shows it.
pub(crate) fn consent_record(r: &sea_orm::QueryResult) -> Result<ConsentRecord, sea_orm::DbErr> {
    Ok(ConsentRecord {
        channel: r.try_get::<i64>("", "channel")? as i32,
        purpose: r.try_get::<i64>("", "purpose")? as i32,
        granted: r.try_get::<i64>("", "granted")? != 0,
        source: r.try_get("", "source")?,
        recorded_at: timestamp(r.try_get("", "recorded_at_us")?),
    })
}

/// A page size: 0 means 100; at most 1000.
pub(crate) fn page_size(requested: i32) -> Result<u64, ServiceError> {
    match requested {
        0 => Ok(100),
        1..=1000 => Ok(requested as u64),
        _ => Err(ServiceError::invalid("page.page_size", "must be 0 to 1000")),
    }
}
