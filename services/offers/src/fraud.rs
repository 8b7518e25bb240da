//! Anti-fraud: failed attempts counted per customer and per source; after a threshold the
//! subject is locked out for a time that doubles with each lockout; every failure, lockout
//! and foreign presentation is recorded as a signal.

use sea_orm::ConnectionTrait;
use winback_platform::ServiceError;
use winback_proto::common::PageResponse;
use winback_proto::offers::{FraudSignal, ListFraudSignalsRequest, ListFraudSignalsResponse};

use crate::context::{Offers, db_error, page_size, timestamp};
use crate::store::{execute, query};

/// Failed attempts that trigger a lockout.
pub(crate) const FAILURES_BEFORE_LOCKOUT: i64 = 5;
/// The first lockout; each further one doubles it.
pub(crate) const FIRST_LOCKOUT_US: i64 = 15 * 60 * 1_000_000;
/// The longest lockout: a day.
const MAX_LOCKOUT_US: i64 = 24 * 3600 * 1_000_000;

/// Who presented a code: the customer and the caller's source.
#[derive(Debug, Clone)]
pub(crate) struct Presenter {
    pub(crate) customer_id: String,
    pub(crate) source: String,
}

impl Presenter {
    pub(crate) fn subjects(&self) -> [String; 2] {
        [
            format!("customer:{}", self.customer_id),
            format!("source:{}", self.source),
        ]
    }
}

impl Offers {
    /// When the presenter's lockout ends, if locked now.
    pub(crate) async fn locked_until(
        &self,
        tenant: &str,
        who: &Presenter,
    ) -> Result<Option<i64>, ServiceError> {
        let now = self.now_us();
        let [customer, source] = who.subjects();
        let rows = query(
            &self.db,
            "SELECT MAX(locked_until_us) AS until FROM attempt_counters WHERE tenant_id = $1 AND subject IN ($2, $3)",
            vec![tenant.into(), customer.into(), source.into()],
        )
        .await
        .map_err(db_error)?;
        let until: Option<i64> = rows
            .first()
            .and_then(|r| r.try_get::<Option<i64>>("", "until").ok().flatten());
        Ok(until.filter(|&u| u > now))
    }

    /// Records a failed attempt (`kind`: "failed_attempt", "not_owner", "reuse") and locks
    /// the subjects out once they reach the threshold.
    pub(crate) async fn record_failure(
        &self,
        tenant: &str,
        who: &Presenter,
        code: &str,
        kind: &str,
    ) -> Result<(), ServiceError> {
        let now = self.now_us();
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        signal(&txn, tenant, kind, who, code, now, 0).await?;
        for subject in who.subjects() {
            execute(
                &txn,
                "INSERT INTO attempt_counters (tenant_id, subject, failures, lockouts, locked_until_us) VALUES ($1, $2, 1, 0, 0)
                 ON CONFLICT (tenant_id, subject) DO UPDATE SET failures = attempt_counters.failures + 1",
                vec![tenant.into(), subject.clone().into()],
            )
            .await
            .map_err(db_error)?;
            let rows = query(
                &txn,
                "SELECT failures, lockouts FROM attempt_counters WHERE tenant_id = $1 AND subject = $2",
                vec![tenant.into(), subject.clone().into()],
            )
            .await
            .map_err(db_error)?;
            let (failures, lockouts) = rows
                .first()
                .map(|r| {
                    (
                        r.try_get::<i64>("", "failures").unwrap_or(0),
                        r.try_get::<i64>("", "lockouts").unwrap_or(0),
                    )
                })
                .unwrap_or((0, 0));
            if failures >= FAILURES_BEFORE_LOCKOUT {
                let length = (FIRST_LOCKOUT_US << lockouts.clamp(0, 20)).min(MAX_LOCKOUT_US);
                let until = now + length;
                execute(
                    &txn,
                    "UPDATE attempt_counters SET failures = 0, lockouts = lockouts + 1, locked_until_us = $3
                     WHERE tenant_id = $1 AND subject = $2",
                    vec![tenant.into(), subject.into(), until.into()],
                )
                .await
                .map_err(db_error)?;
                signal(&txn, tenant, "lockout", who, code, now, until).await?;
            }
        }
        txn.commit().await.map_err(db_error)
    }

    /// Records a signal that does not count towards a lockout.
    pub(crate) async fn record_signal(
        &self,
        tenant: &str,
        who: &Presenter,
        code: &str,
        kind: &str,
    ) -> Result<(), ServiceError> {
        signal(&self.db, tenant, kind, who, code, self.now_us(), 0).await
    }

    /// Signals, newest first.
    pub(crate) async fn fraud_signals(
        &self,
        tenant: &str,
        r: ListFraudSignalsRequest,
    ) -> Result<ListFraudSignalsResponse, ServiceError> {
        let page = r.page.unwrap_or_default();
        let size = page_size(&page)?;
        let before: i64 = if page.page_token.is_empty() {
            0
        } else {
            page.page_token.parse().map_err(|_| {
                ServiceError::invalid("page.page_token", "not a token from a previous page")
            })?
        };
        let since = match &r.since {
            Some(ts) => winback_platform::time::from_timestamp(ts)
                .ok_or_else(|| ServiceError::invalid("since", "not a valid time"))?
                .timestamp_micros(),
            None => i64::MIN,
        };
        let rows = query(
            &self.db,
            "SELECT seq, kind, customer_id, source, code, at_us, locked_until_us FROM fraud_signals
             WHERE tenant_id = $1 AND ($2 = '' OR customer_id = $2) AND ($3 = '' OR source = $3)
               AND at_us >= $4 AND ($5 = 0 OR seq < $5)
             ORDER BY seq DESC LIMIT $6",
            vec![
                tenant.into(),
                r.customer_id.into(),
                r.source.into(),
                since.into(),
                before.into(),
                (size + 1).into(),
            ],
        )
        .await
        .map_err(db_error)?;
        let mut signals: Vec<(i64, FraudSignal)> = rows
            .iter()
            .map(|row| {
                let locked: i64 = row.try_get("", "locked_until_us").unwrap_or(0);
                (
                    row.try_get("", "seq").unwrap_or(0),
                    FraudSignal {
                        kind: row.try_get("", "kind").unwrap_or_default(),
                        customer_id: row.try_get("", "customer_id").unwrap_or_default(),
                        source: row.try_get("", "source").unwrap_or_default(),
                        code: row.try_get("", "code").unwrap_or_default(),
                        at: timestamp(row.try_get("", "at_us").unwrap_or(0)),
                        locked_until: if locked > 0 { timestamp(locked) } else { None },
                    },
                )
            })
            .collect();
        let next_page_token =
            crate::templates::next_token(&mut signals, size, |(seq, _)| seq.to_string());
        Ok(ListFraudSignalsResponse {
            signals: signals.into_iter().map(|(_, s)| s).collect(),
            page: Some(PageResponse { next_page_token }),
        })
    }
}

async fn signal<C: ConnectionTrait>(
    db: &C,
    tenant: &str,
    kind: &str,
    who: &Presenter,
    code: &str,
    at_us: i64,
    locked_until_us: i64,
) -> Result<(), ServiceError> {
    // Codes as presented can be anything: keep a bounded, printable excerpt.
    let code: String = code.chars().filter(|c| !c.is_control()).take(64).collect();
    execute(
        db,
        "INSERT INTO fraud_signals (tenant_id, kind, customer_id, source, code, at_us, locked_until_us)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            tenant.into(),
            kind.into(),
            who.customer_id.clone().into(),
            who.source.clone().into(),
            code.into(),
            at_us.into(),
            locked_until_us.into(),
        ],
    )
    .await
    .map_err(db_error)
    .map(|_| ())
}
