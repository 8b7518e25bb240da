//! Per-tenant quotas: calls per second to a service process (a token bucket per tenant,
//! governor's GCRA) and messages per UTC day (checked by delivery before it accepts a
//! send). Defaults come from `quotas.*`; a tenant's own limits live in the platform
//! database (`tenant_quotas`, set by `winback tenant quota`) and are re-read with the
//! revoked keys. A tenant over a limit is answered `RESOURCE_EXHAUSTED` with `RetryInfo`
//! saying when to try again and `QuotaFailure` naming the limit.
//!
//! Service credentials are not limited: the services' own calls to each other are the
//! consequence of a tenant's calls that were already counted.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sea_orm::{DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;

use crate::config::QuotaConfig;
use crate::error::ServiceError;

/// One tenant's limits; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TenantQuota {
    /// Calls per second to one service process.
    pub calls_per_second: u32,
    /// Calls at once above that rate.
    pub call_burst: u32,
    /// Messages per UTC day.
    pub messages_per_day: u32,
}

impl From<QuotaConfig> for TenantQuota {
    fn from(c: QuotaConfig) -> Self {
        Self {
            calls_per_second: c.calls_per_second,
            call_burst: c.call_burst,
            messages_per_day: c.messages_per_day,
        }
    }
}

/// The limits of every tenant and their call buckets, shared by every clone.
#[derive(Debug, Clone)]
pub struct Quotas {
    defaults: TenantQuota,
    own: Arc<RwLock<HashMap<String, TenantQuota>>>,
    buckets: Arc<RwLock<HashMap<String, Bucket>>>,
}

#[derive(Debug, Clone)]
struct Bucket {
    quota: TenantQuota,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl Quotas {
    /// Quotas with these defaults and no tenant of its own yet.
    pub fn new(defaults: QuotaConfig) -> Self {
        Self {
            defaults: defaults.into(),
            own: Arc::default(),
            buckets: Arc::default(),
        }
    }

    /// The limits `tenant` has.
    pub fn of(&self, tenant: &str) -> TenantQuota {
        self.own
            .read()
            .ok()
            .and_then(|own| own.get(tenant).copied())
            .unwrap_or(self.defaults)
    }

    /// Counts one call of `tenant`; `RESOURCE_EXHAUSTED` with the wait when over its rate.
    pub fn check_call(&self, tenant: &str) -> Result<(), ServiceError> {
        let quota = self.of(tenant);
        let (Some(rate), Some(burst)) = (
            NonZeroU32::new(quota.calls_per_second),
            NonZeroU32::new(quota.call_burst),
        ) else {
            return Ok(());
        };
        let limiter = self.bucket(tenant, quota, rate, burst);
        limiter
            .check()
            .map_err(|not_until| ServiceError::QuotaExceeded {
                limit: "calls_per_second",
                description: format!(
                    "tenant {tenant} is over its {} calls per second",
                    quota.calls_per_second
                ),
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            })
    }

    fn bucket(
        &self,
        tenant: &str,
        quota: TenantQuota,
        rate: NonZeroU32,
        burst: NonZeroU32,
    ) -> Arc<DefaultDirectRateLimiter> {
        if let Ok(buckets) = self.buckets.read()
            && let Some(bucket) = buckets.get(tenant)
            && bucket.quota == quota
        {
            return bucket.limiter.clone();
        }
        // New tenant, or its limits changed: a fresh, full bucket.
        let limiter = Arc::new(RateLimiter::direct(
            Quota::per_second(rate).allow_burst(burst),
        ));
        if let Ok(mut buckets) = self.buckets.write() {
            buckets.insert(
                tenant.to_owned(),
                Bucket {
                    quota,
                    limiter: limiter.clone(),
                },
            );
        }
        limiter
    }

    /// `RESOURCE_EXHAUSTED` when `tenant` has already had `sent_today` messages accepted
    /// today (UTC) and that is its limit; the retry comes at the next UTC midnight.
    pub fn check_messages(
        &self,
        tenant: &str,
        sent_today: u64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), ServiceError> {
        let limit = self.of(tenant).messages_per_day;
        if limit == 0 || sent_today < u64::from(limit) {
            return Ok(());
        }
        let midnight = start_of_day(now) + chrono::Duration::days(1);
        Err(ServiceError::QuotaExceeded {
            limit: "messages_per_day",
            description: format!("tenant {tenant} has sent its {limit} messages for today (UTC)"),
            retry_after: (midnight - now).to_std().unwrap_or_default(),
        })
    }

    /// Replaces the tenants' own limits.
    pub fn replace(&self, own: HashMap<String, TenantQuota>) {
        if let Ok(mut current) = self.own.write() {
            *current = own;
        }
    }

    /// Loads the tenants' own limits now, then re-reads them every `every` until
    /// `shutdown`.
    pub async fn watch(
        &self,
        db: DatabaseConnection,
        every: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), DbErr> {
        self.replace(load(&db).await?);
        let quotas = self.clone();
        crate::tenancy::refresh_every(every, shutdown, "tenant quotas", move || {
            let db = db.clone();
            let quotas = quotas.clone();
            async move {
                quotas.replace(load(&db).await?);
                Ok(())
            }
        });
        Ok(())
    }
}

/// Midnight UTC of `at`'s day.
pub fn start_of_day(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    at.date_naive().and_time(chrono::NaiveTime::MIN).and_utc()
}

async fn load(db: &DatabaseConnection) -> Result<HashMap<String, TenantQuota>, DbErr> {
    let rows = crate::db::query(
        db,
        "SELECT tenant_id, calls_per_second, call_burst, messages_per_day FROM tenant_quotas",
        vec![],
    )
    .await?;
    rows.into_iter()
        .map(|r| {
            let number = |c: &str| -> Result<u32, DbErr> {
                let v: i64 = r.try_get("", c)?;
                u32::try_from(v).map_err(|_| DbErr::Custom(format!("tenant_quotas.{c}: {v}")))
            };
            Ok((
                r.try_get("", "tenant_id")?,
                TenantQuota {
                    calls_per_second: number("calls_per_second")?,
                    call_burst: number("call_burst")?,
                    messages_per_day: number("messages_per_day")?,
                },
            ))
        })
        .collect()
}

/// Sets a tenant's own limits in the platform database (every service picks them up
/// within `auth.revocation_poll_ms`).
pub async fn set_tenant_quota(
    db: &DatabaseConnection,
    tenant: &str,
    quota: TenantQuota,
) -> Result<(), DbErr> {
    crate::db::execute(
        db,
        "INSERT INTO tenant_quotas (tenant_id, calls_per_second, call_burst, messages_per_day) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id) DO UPDATE SET \
         calls_per_second = excluded.calls_per_second, call_burst = excluded.call_burst, \
         messages_per_day = excluded.messages_per_day",
        vec![
            tenant.into(),
            i64::from(quota.calls_per_second).into(),
            i64::from(quota.call_burst).into(),
            i64::from(quota.messages_per_day).into(),
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db_test;

    fn limited(calls_per_second: u32, call_burst: u32, messages_per_day: u32) -> QuotaConfig {
        QuotaConfig {
            calls_per_second,
            call_burst,
            messages_per_day,
        }
    }

    #[test]
    fn a_tenant_over_its_rate_is_told_when_to_retry_and_others_are_not_touched() {
        let quotas = Quotas::new(limited(5, 3, 0));
        for _ in 0..3 {
            quotas.check_call("t-1").unwrap();
        }
        match quotas.check_call("t-1") {
            Err(ServiceError::QuotaExceeded {
                limit, retry_after, ..
            }) => {
                assert_eq!(limit, "calls_per_second");
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(200));
            }
            other => panic!("{other:?}"),
        }
        quotas.check_call("t-2").unwrap();
        // A tenant with its own, higher limit.
        let mut own = HashMap::new();
        own.insert(
            "t-1".to_owned(),
            TenantQuota {
                calls_per_second: 100,
                call_burst: 100,
                messages_per_day: 0,
            },
        );
        quotas.replace(own);
        for _ in 0..50 {
            quotas.check_call("t-1").unwrap();
        }
    }

    #[test]
    fn messages_per_day_retry_at_the_next_utc_midnight() {
        let quotas = Quotas::new(limited(0, 0, 10));
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-07T22:30:00Z")
            .unwrap()
            .to_utc();
        quotas.check_messages("t", 9, now).unwrap();
        match quotas.check_messages("t", 10, now) {
            Err(ServiceError::QuotaExceeded { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(90 * 60));
            }
            other => panic!("{other:?}"),
        }
        Quotas::new(limited(0, 0, 0))
            .check_messages("t", 1_000_000, now)
            .unwrap();
    }

    db_test!(own_quotas_are_stored_and_loaded, |db| async move {
        let conn = crate::tenancy::open_platform_db(&crate::config::Config {
            database: crate::config::DatabaseConfig {
                url: db.url_template.clone(),
                ..Default::default()
            },
            data_dir: db.dir().to_path_buf(),
            ..Default::default()
        })
        .await
        .unwrap();
        let quota = TenantQuota {
            calls_per_second: 7,
            call_burst: 9,
            messages_per_day: 11,
        };
        set_tenant_quota(&conn, "t-1", quota).await.unwrap();
        set_tenant_quota(&conn, "t-1", quota).await.unwrap();
        let quotas = Quotas::new(QuotaConfig::default());
        quotas.replace(load(&conn).await.unwrap());
        assert_eq!(quotas.of("t-1"), quota);
        assert_eq!(quotas.of("t-2"), QuotaConfig::default().into());
    });
}
