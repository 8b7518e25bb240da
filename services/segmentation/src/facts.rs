//! Reading a tenant's facts from profiles (`StreamFacts`) into the numbers scoring needs.
//! Each streamed chunk is turned into compact rows and dropped, so a million customers
//! stay around 150 MB however large their facts are.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use tokio_stream::StreamExt;
use winback_platform::ServiceError;
use winback_platform::config::Peer;
use winback_platform::host::ServiceContext;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::{CustomerFacts, StreamFactsRequest};
use winback_scoring::score::CustomerInput;

const DAY_SECONDS: i64 = 86_400;

/// One customer, ready to score.
#[derive(Debug, Clone)]
pub(crate) struct CustomerRow {
    pub(crate) customer_id: String,
    /// Index into [`TenantFacts::currencies`].
    pub(crate) currency: u16,
    pub(crate) input: CustomerInput,
}

/// Every customer of a tenant (or those whose facts changed), sorted by customer id.
#[derive(Debug, Default)]
pub(crate) struct TenantFacts {
    pub(crate) customers: Vec<CustomerRow>,
    pub(crate) currencies: Vec<String>,
    /// Customers erased (streamed only when asking for changes), sorted.
    pub(crate) erased: Vec<String>,
    /// Profiles' cursor after these facts: the next incremental run asks for changes after
    /// it. Empty for facts as of a past time.
    pub(crate) cursor: String,
}

impl TenantFacts {
    /// The currency most customers pay in (the summary's currency).
    pub(crate) fn main_currency(&self) -> String {
        let mut counts = vec![0usize; self.currencies.len()];
        for c in &self.customers {
            if let Some(n) = counts.get_mut(usize::from(c.currency)) {
                *n += 1;
            }
        }
        counts
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.currencies[*i].is_empty())
            .max_by_key(|(_, n)| **n)
            .map(|(i, _)| self.currencies[i].clone())
            .unwrap_or_default()
    }

    pub(crate) fn inputs(&self) -> Vec<CustomerInput> {
        self.customers.iter().map(|c| c.input).collect()
    }

    fn currency_index(&mut self, currency: &str) -> u16 {
        match self.currencies.iter().position(|c| c == currency) {
            Some(i) => i as u16,
            None => {
                self.currencies.push(currency.to_owned());
                (self.currencies.len() - 1) as u16
            }
        }
    }
}

/// Streams every customer's facts of `tenant` from profiles.
pub(crate) async fn load(
    ctx: &ServiceContext,
    tenant: &str,
    requested: crate::recompute::AsOf,
) -> Result<TenantFacts, ServiceError> {
    let as_of = requested
        .cut_history
        .then(|| winback_platform::time::to_timestamp(requested.at));
    stream(ctx, tenant, String::new(), as_of, requested.at).await
}

/// Streams the facts of `tenant`'s customers that changed after `cursor`, as of `now`.
pub(crate) async fn load_changed(
    ctx: &ServiceContext,
    tenant: &str,
    cursor: &str,
    now: DateTime<Utc>,
) -> Result<TenantFacts, ServiceError> {
    let mut facts = stream(ctx, tenant, cursor.to_owned(), None, now).await?;
    if facts.cursor.is_empty() {
        // Nothing changed: the next run asks from the same place.
        cursor.clone_into(&mut facts.cursor);
    }
    Ok(facts)
}

async fn stream(
    ctx: &ServiceContext,
    tenant: &str,
    changed_since_cursor: String,
    as_of_request: Option<Timestamp>,
    as_of: DateTime<Utc>,
) -> Result<TenantFacts, ServiceError> {
    let (channel, credentials) = ctx.peer(Peer::Profiles, tenant)?;
    let mut client = ProfilesServiceClient::with_interceptor(channel, credentials)
        .max_decoding_message_size(ctx.config.server.max_message_bytes.max(64 * 1024 * 1024));
    let mut stream = client
        .stream_facts(StreamFactsRequest {
            changed_since_cursor,
            chunk_size: 10_000,
            as_of: as_of_request,
        })
        .await
        .map_err(|s| upstream("profiles.StreamFacts", &s))?
        .into_inner();
    let mut facts = TenantFacts::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| upstream("profiles.StreamFacts", &s))?;
        if !chunk.cursor.is_empty() {
            facts.cursor = chunk.cursor;
        }
        for f in chunk.facts {
            if f.erased {
                facts.erased.push(f.customer_id);
                continue;
            }
            let currency = facts.currency_index(&f.currency);
            facts.customers.push(CustomerRow {
                input: input_of(&f, as_of),
                currency,
                customer_id: f.customer_id,
            });
        }
    }
    // Profiles streams in customer id order; sorting again costs little and makes the
    // merge with the previous scores independent of that promise.
    if !facts
        .customers
        .is_sorted_by(|a, b| a.customer_id < b.customer_id)
    {
        facts
            .customers
            .sort_unstable_by(|a, b| a.customer_id.cmp(&b.customer_id));
    }
    facts.erased.sort_unstable();
    Ok(facts)
}

/// A failed call to another service, as this service's error.
pub(crate) fn upstream(call: &str, status: &tonic::Status) -> ServiceError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            ServiceError::Internal(format!("{call} unavailable: {}", status.message()))
        }
        _ => ServiceError::Internal(format!(
            "{call} failed: {:?} {}",
            status.code(),
            status.message()
        )),
    }
}

fn day_of(ts: &Timestamp) -> i64 {
    ts.seconds.div_euclid(DAY_SECONDS)
}

/// The scoring input of one customer's facts. Purchase times count in whole UTC days (as
/// purchase days do), so customers with the same history compress into one model row.
pub(crate) fn input_of(f: &CustomerFacts, as_of: DateTime<Utc>) -> CustomerInput {
    let as_of_seconds = as_of.timestamp();
    let as_of_day = as_of_seconds.div_euclid(DAY_SECONDS);
    let purchase_days = f.purchase_days.max(0) as u32;
    let (days_since_first, days_since_last) = match (&f.first_purchase_at, &f.last_purchase_at) {
        (Some(first), Some(last)) if purchase_days > 0 => {
            let since_first = (as_of_day - day_of(first)).max(0) as f64;
            let since_last = ((as_of_day - day_of(last)).max(0) as f64).min(since_first);
            (since_first, since_last)
        }
        _ => (0.0, 0.0),
    };
    let days_since_engagement = [
        &f.last_open_at,
        &f.last_click_at,
        &f.last_visit_at,
        &f.last_cart_abandoned_at,
        &f.last_product_view_at,
    ]
    .into_iter()
    .flatten()
    .map(|t| ((as_of_seconds - t.seconds) as f64 / DAY_SECONDS as f64).max(0.0))
    .fold(f64::INFINITY, f64::min);
    CustomerInput {
        purchase_days: if days_since_first == 0.0 && purchase_days == 0 {
            0
        } else {
            purchase_days
        },
        days_since_first,
        days_since_last,
        total_spent: f.total_spent_minor.max(0) as f64,
        average_check: f.average_check_minor.max(0) as f64,
        repeat_average_check: if purchase_days > 1 {
            f.repeat_spent_minor.max(0) as f64 / f64::from(purchase_days - 1)
        } else {
            0.0
        },
        mean_interval_days: f.mean_interval_days.max(0.0),
        days_since_engagement,
        consecutive_unopened: f.consecutive_unopened.max(0) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> Timestamp {
        winback_platform::time::to_timestamp(Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap())
    }

    #[test]
    fn days_are_whole_utc_days_and_engagement_takes_the_latest_signal() {
        let facts = CustomerFacts {
            purchase_days: 3,
            first_purchase_at: Some(at(2026, 1, 1, 23)),
            last_purchase_at: Some(at(2026, 3, 2, 1)),
            total_spent_minor: 9_000,
            average_check_minor: 3_000,
            mean_interval_days: 30.0,
            last_open_at: Some(at(2026, 3, 20, 12)),
            last_visit_at: Some(at(2026, 3, 30, 12)),
            consecutive_unopened: 4,
            ..Default::default()
        };
        let as_of = Utc.with_ymd_and_hms(2026, 4, 1, 12, 0, 0).unwrap();
        let input = input_of(&facts, as_of);
        assert_eq!(input.days_since_first, 90.0);
        assert_eq!(input.days_since_last, 30.0);
        assert_eq!(input.days_since_engagement, 2.0);
        assert_eq!((input.purchase_days, input.consecutive_unopened), (3, 4));
        let prospect = input_of(&CustomerFacts::default(), as_of);
        assert_eq!(prospect.purchase_days, 0);
        assert!(prospect.days_since_engagement.is_infinite());
    }
}
