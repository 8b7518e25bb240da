//! API keys in the stack mode: two `winback-profiles` processes (replicas) on one database
//! serve a tenant's key, refuse a key without the scope, and both refuse the key within
//! seconds of its revocation — with no call to anyone per request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use winback_platform::api_keys::{ApiKeyStore, KeyRequest};
use winback_platform::auth::{TokenSigner, ensure_key_pair, read_key};
use winback_platform::db_test;
use winback_platform::tenancy::TenantRegistry;
use winback_platform::testing::TestDatabase;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::{GetCustomerRequest, UpsertCustomersRequest};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_replica(db: &TestDatabase, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_winback-profiles"))
        .env("WINBACK_LISTEN", format!("127.0.0.1:{port}"))
        .env("WINBACK_DATA_DIR", db.dir())
        .env("WINBACK_DATABASE__URL", &db.url_template)
        .env("WINBACK_AUTH__REVOCATION_POLL_MS", "500")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log_of(db, port)).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("the winback-profiles binary")
}

fn log_of(db: &TestDatabase, port: u16) -> std::path::PathBuf {
    db.dir().join(format!("replica-{port}.log"))
}

async fn connect(db: &TestDatabase, port: u16) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            return channel;
        }
        assert!(
            Instant::now() < deadline,
            "replica on {port} never served: {}",
            std::fs::read_to_string(log_of(db, port)).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_customer(channel: &Channel, token: &str) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(GetCustomerRequest {
        customer_id: "c-1".into(),
    });
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    match ProfilesServiceClient::new(channel.clone())
        .get_customer(request)
        .await
    {
        // Authenticated: the customer is simply not there.
        Err(status) if status.code() == Code::NotFound => Ok(()),
        Err(status) => Err(status),
        Ok(_) => Ok(()),
    }
}

db_test!(
    a_revoked_key_fails_on_every_replica_within_seconds,
    |db| async move {
        let keys = db.dir().join("keys");
        ensure_key_pair(&keys.join("token.key.pem"), &keys.join("token.pub.pem")).unwrap();
        let platform = winback_platform::db::connect(&db.url("platform"), "platform", 2)
            .await
            .unwrap();
        let tenant = TenantRegistry::open(platform.clone())
            .await
            .unwrap()
            .create("Coffee on Pokrovka", chrono::Utc::now())
            .await
            .unwrap();
        let signer =
            TokenSigner::from_pem(&read_key(&keys.join("token.key.pem")).unwrap(), "winback")
                .unwrap();
        let store = ApiKeyStore::new(platform);
        let key = |name: &'static str, scope: &'static str| {
            let store = store.clone();
            let signer = signer.clone();
            let tenant_id = tenant.tenant_id.clone();
            async move {
                store
                    .create(
                        &signer,
                        KeyRequest {
                            tenant_id: &tenant_id,
                            name,
                            scopes: &[scope.to_owned()],
                            ttl_days: 7,
                        },
                    )
                    .await
                    .unwrap()
            }
        };
        let analyst = key("analyst", "read-only").await;
        let crm = key("crm sync", "ingest").await;

        let ports = [free_port(), free_port()];
        let _replicas: Vec<Child> = ports.iter().map(|&p| start_replica(db, p)).collect();
        let mut channels = Vec::new();
        for port in ports {
            channels.push(connect(db, port).await);
        }
        for (channel, port) in channels.iter().zip(ports) {
            for token in [&analyst.token, &crm.token] {
                if let Err(status) = get_customer(channel, token).await {
                    panic!(
                        "replica on {port}: {status:?}\n{}",
                        std::fs::read_to_string(log_of(db, port)).unwrap_or_default()
                    );
                }
            }
        }
        // A read-only key cannot write.
        let mut write = tonic::Request::new(UpsertCustomersRequest::default());
        write.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", analyst.token).parse().unwrap(),
        );
        let refused = ProfilesServiceClient::new(channels[0].clone())
            .upsert_customers(write)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

        store
            .revoke(&tenant.tenant_id, &analyst.key.key_id, chrono::Utc::now())
            .await
            .unwrap();
        let revoked_at = Instant::now();
        for channel in &channels {
            loop {
                match get_customer(channel, &analyst.token).await {
                    Ok(()) => {}
                    Err(status) => {
                        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                        assert!(status.message().contains("revoked"), "{status:?}");
                        break;
                    }
                }
                assert!(
                    revoked_at.elapsed() < Duration::from_secs(5),
                    "a revoked key still served after 5 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The tenant's other key is untouched.
            get_customer(channel, &crm.token).await.unwrap();
        }
        eprintln!(
            "revocation took effect on both replicas after {:?}",
            revoked_at.elapsed()
        );
    }
);
