//! What every operation of the offers service works with.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::ServiceError;
use winback_platform::clock::SharedClock;
use winback_platform::config::Peer;
use winback_platform::db::{WriteGate, WriteGuard};
use winback_platform::events::Outbox;
use winback_platform::grpc::{CallCredentials, lazy_channel};
use winback_platform::host::ServiceContext;
use winback_proto::offers::OfferTemplate;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;

/// The service's database, outbox, clock, and the way to profiles.
#[derive(Debug, Clone)]
pub(crate) struct Offers {
    pub(crate) db: DatabaseConnection,
    pub(crate) outbox: Outbox,
    pub(crate) clock: SharedClock,
    pub(crate) profiles: ProfilesPeer,
    pub(crate) terms: TermsCache,
    /// Writers queue here on SQLite.
    sqlite_writer: WriteGate,
}

impl Offers {
    pub(crate) fn new(
        db: DatabaseConnection,
        outbox: Outbox,
        clock: SharedClock,
        profiles: ProfilesPeer,
    ) -> Self {
        Self {
            db,
            outbox,
            clock,
            profiles,
            terms: TermsCache::default(),
            sqlite_writer: WriteGate::default(),
        }
    }

    /// Begins a writing transaction. Keep the guard until the commit.
    pub(crate) async fn begin_write(&self) -> Result<(WriteGuard, DatabaseTransaction), DbErr> {
        self.sqlite_writer.begin(&self.db).await
    }

    /// The SQLite writer lock (nothing on PostgreSQL). Keep it until the commit.
    pub(crate) async fn writer_lock(&self) -> WriteGuard {
        self.sqlite_writer.enter(&self.db).await
    }

    /// Now in microseconds by the service clock.
    pub(crate) fn now_us(&self) -> i64 {
        self.clock.now().timestamp_micros()
    }
}

/// Offer templates by tenant and id, for redemption; bounded (cleared when full).
#[derive(Debug, Clone, Default)]
pub(crate) struct TermsCache(Arc<std::sync::Mutex<TermsByTemplate>>);

/// Templates by (tenant, template id).
type TermsByTemplate = HashMap<(String, String), Arc<OfferTemplate>>;

impl TermsCache {
    const CAPACITY: usize = 10_000;

    pub(crate) fn get(&self, tenant: &str, id: &str) -> Option<Arc<OfferTemplate>> {
        let map = self.0.lock().ok()?;
        map.get(&(tenant.to_owned(), id.to_owned())).cloned()
    }

    pub(crate) fn put(&self, tenant: &str, id: &str, t: Arc<OfferTemplate>) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= Self::CAPACITY {
                map.clear();
            }
            map.insert((tenant.to_owned(), id.to_owned()), t);
        }
    }
}

/// One channel to profiles for the life of the service (it multiplexes every call), and
/// the service credential to call it for a tenant.
#[derive(Debug, Clone)]
pub(crate) struct ProfilesPeer {
    channel: Option<Channel>,
    credentials: Option<CallCredentials>,
}

impl ProfilesPeer {
    pub(crate) fn new(ctx: &ServiceContext) -> Self {
        Self {
            channel: lazy_channel(&ctx.config.peer_url(Peer::Profiles)).ok(),
            credentials: ctx.service_credentials.clone(),
        }
    }

    /// A profiles client acting for `tenant`.
    pub(crate) fn client(
        &self,
        tenant: &str,
    ) -> Result<ProfilesServiceClient<InterceptedService<Channel, CallCredentials>>, ServiceError>
    {
        let (Some(channel), Some(credentials)) = (&self.channel, &self.credentials) else {
            return Err(ServiceError::FailedPrecondition(
                "offers cannot reach profiles: no service credential (auth.service_token_file) or no profiles address".into(),
            ));
        };
        let credentials = credentials
            .for_tenant(tenant)
            .map_err(|s| ServiceError::invalid("tenant", s.message()))?;
        Ok(ProfilesServiceClient::with_interceptor(
            channel.clone(),
            credentials,
        ))
    }
}

/// A database error as the caller sees it.
pub(crate) fn db_error(e: DbErr) -> ServiceError {
    ServiceError::internal(e)
}

/// A protobuf timestamp of microseconds.
pub(crate) fn timestamp(us: i64) -> Option<prost_types::Timestamp> {
    chrono::DateTime::from_timestamp_micros(us).map(winback_platform::time::to_timestamp)
}

pub(crate) use winback_platform::paging::page_size;
