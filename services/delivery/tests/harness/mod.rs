//! A delivery service on a test database with its worker running, a real SMTP server
//! (aiosmtpd, `tests/smtp_sink.py`), and clients for two tenants.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::auth::TokenSigner;
use winback_platform::clock::ManualClock;
use winback_platform::config::{Config, DatabaseConfig, DeliveryConfig};
use winback_platform::grpc::CallCredentials;
use winback_platform::host::ServiceContext;
use winback_platform::testing::{TestDatabase, test_keys};
use winback_proto::delivery::delivery_service_client::DeliveryServiceClient;

pub mod providers;

pub type Client = DeliveryServiceClient<InterceptedService<Channel, CallCredentials>>;

pub struct Harness {
    pub a: Client,
    pub b: Client,
    pub clock: ManualClock,
    pub channel: Channel,
    pub signer: TokenSigner,
    /// The tracking server's base URL.
    pub tracking: String,
    shutdown: CancellationToken,
}

impl Harness {
    pub async fn start(db: &TestDatabase) -> Self {
        Self::start_with(db, |_| {}).await
    }

    /// Starts with the delivery settings changed by `tune`.
    pub async fn start_with(db: &TestDatabase, tune: impl FnOnce(&mut DeliveryConfig)) -> Self {
        let (signer, verifier) = test_keys();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tracking = free_port();
        let config = Config {
            listen: addr,
            data_dir: db.dir().to_path_buf(),
            database: DatabaseConfig {
                url: db.url_template.clone(),
                max_connections: 8,
            },
            delivery: DeliveryConfig {
                tracking_listen: tracking,
                public_url: format!("http://{tracking}"),
                poll_interval_ms: 20,
                retry_base_ms: 1_000,
                provider_timeout_ms: 500,
                ..DeliveryConfig::default()
            },
            ..Config::default()
        };
        let mut config = config;
        tune(&mut config.delivery);
        let tracking_url = config.delivery.public_url.clone();
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap());
        let shutdown = CancellationToken::new();
        let ctx = ServiceContext {
            config,
            clock: Arc::new(clock.clone()),
            verifier,
            shutdown: shutdown.clone(),
            service_credentials: None,
        };
        let mut server = ctx.server();
        let mounted = winback_delivery::mount(&ctx, &mut server).await.unwrap();
        tokio::spawn(async move { ctx.serve(server, listener, vec![mounted]).await.unwrap() });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let client = |tenant: &str| {
            let token = signer.tenant_token(tenant, &["*"], 600).unwrap();
            DeliveryServiceClient::with_interceptor(
                channel.clone(),
                CallCredentials::bearer(&token).unwrap(),
            )
        };
        Self {
            a: client("t-a"),
            b: client("t-b"),
            clock,
            channel: channel.clone(),
            signer,
            tracking: tracking_url,
            shutdown,
        }
    }

    pub fn client_with_scopes(&self, scopes: &[&str]) -> Client {
        let token = self.signer.tenant_token("t-a", scopes, 600).unwrap();
        DeliveryServiceClient::with_interceptor(
            self.channel.clone(),
            CallCredentials::bearer(&token).unwrap(),
        )
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

/// A running aiosmtpd that stores what it accepts.
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl SmtpSink {
    /// Starts the sink. Needs `python3`; installs `aiosmtpd` from PyPI on first use.
    pub async fn start(dir: PathBuf) -> Self {
        ensure_aiosmtpd();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with aiosmtpd is needed for the SMTP tests (pip install aiosmtpd)");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await.unwrap();
        let port = line
            .trim()
            .parse()
            .expect("aiosmtpd did not start (pip install aiosmtpd)");
        Self { port, dir, child }
    }

    /// The stored messages, oldest first, with quoted-printable soft line breaks and `=3D`
    /// undone so assertions can look for whole URLs.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        files.sort();
        files
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .replace("=\r\n", "")
                    .replace("=\n", "")
                    .replace("=3D", "=")
            })
            .collect()
    }
}

fn has_aiosmtpd() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs aiosmtpd once per machine; test processes run in parallel, so one installs
/// (holding a lock file) while the others wait for it.
fn ensure_aiosmtpd() {
    if has_aiosmtpd() {
        return;
    }
    let lock = std::env::temp_dir().join("winback-aiosmtpd-install.lock");
    for _ in 0..600 {
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
            .is_ok()
        {
            eprintln!("*** installing aiosmtpd (pip) for the SMTP tests ***");
            let installed = std::process::Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "aiosmtpd"])
                .status();
            let _ = std::fs::remove_file(&lock);
            assert!(
                installed.is_ok_and(|s| s.success()),
                "could not install aiosmtpd: run `python3 -m pip install aiosmtpd`"
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        if has_aiosmtpd() {
            return;
        }
    }
    panic!("waited two minutes for another test to install aiosmtpd");
}

/// A port nobody listens on right now (for servers that bind their own address).
pub fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

impl Harness {
    /// Tenant a's events on the delivery feed so far.
    pub async fn events(&self) -> Vec<winback_proto::events::Event> {
        use winback_proto::events::events_service_client::EventsServiceClient;
        let token = self.signer.tenant_token("t-a", &["*"], 600).unwrap();
        let mut client = EventsServiceClient::with_interceptor(
            self.channel.clone(),
            CallCredentials::bearer(&token).unwrap(),
        );
        let mut stream = client
            .subscribe(winback_proto::events::SubscribeRequest {
                source: winback_proto::events::EventSource::Delivery as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while let Ok(Ok(Some(reply))) =
            tokio::time::timeout(std::time::Duration::from_millis(500), stream.message()).await
        {
            events.extend(reply.event);
        }
        events
    }
}

/// A header's value with folded lines joined.
pub fn header_value(email: &str, name: &str) -> String {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let mut lines = email.lines();
    let mut value = String::new();
    while let Some(line) = lines.next() {
        if line.to_ascii_lowercase().starts_with(&prefix) {
            value.push_str(line[prefix.len()..].trim());
            for more in lines.by_ref() {
                if more.starts_with(' ') || more.starts_with('\t') {
                    value.push(' ');
                    value.push_str(more.trim());
                } else {
                    break;
                }
            }
            return value;
        }
    }
    value
}

/// The first quoted attribute value that starts with `prefix`.
pub fn link_starting(email: &str, prefix: &str) -> String {
    let at = email
        .find(prefix)
        .unwrap_or_else(|| panic!("no link {prefix} in {email}"));
    email[at..]
        .split(['"', '>', '\r', '\n'])
        .next()
        .unwrap()
        .to_owned()
}

/// Test DKIM key: Ed25519, base64 of its 32 secret bytes.
pub const DKIM_ED25519_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
