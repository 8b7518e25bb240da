//! Configuration: defaults → optional `winback.toml` → `WINBACK_*` environment variables
//! (`__` separates sections: `WINBACK_SERVER__REQUEST_TIMEOUT_MS=5000`). Validated at start;
//! every error names the key at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Name of the optional configuration file looked up in the working directory.
pub const CONFIG_FILE: &str = "winback.toml";

/// Top-level sections; other `WINBACK_*` variables are not configuration (e.g. test settings).
const SECTIONS: &[&str] = &[
    "listen",
    "data_dir",
    "database",
    "auth",
    "server",
    "telemetry",
    "events",
    "clients",
    "delivery",
    "campaigns",
];

/// An invalid or unreadable configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has a value that does not parse or is unknown.
    #[error("configuration key `{key}`: {reason}")]
    Load {
        /// The key, dotted (`server.request_timeout_ms`).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A key parses but breaks a rule.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The key, dotted.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// The key at fault, dotted.
    pub fn key(&self) -> &str {
        match self {
            Self::Load { key, .. } => key,
            Self::Invalid { key, .. } => key,
        }
    }
}

/// The whole configuration of a Winback process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Folder for SQLite files, keys and local outboxes.
    pub data_dir: PathBuf,
    /// Database.
    pub database: DatabaseConfig,
    /// Tokens.
    pub auth: AuthConfig,
    /// gRPC server limits.
    pub server: ServerConfig,
    /// Logs, traces and metrics.
    pub telemetry: TelemetryConfig,
    /// Event feed.
    pub events: EventsConfig,
    /// Where the other services are.
    pub clients: ClientsConfig,
    /// Delivery's workers and its tracking server.
    pub delivery: DeliveryConfig,
    /// Campaigns' step workers and event consumers.
    pub campaigns: CampaignsConfig,
    /// Default per-tenant quotas (`winback tenant quota` sets a tenant's own).
    pub quotas: QuotaConfig,
}

/// Per-tenant limits every tenant gets unless the platform database gives it its own.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Calls per second a tenant's keys may make to one service process; 0 = no limit.
    pub calls_per_second: u32,
    /// Calls a tenant may make at once above that rate (the bucket's size).
    pub call_burst: u32,
    /// Messages delivery accepts for a tenant per UTC day; 0 = no limit.
    pub messages_per_day: u32,
}

impl QuotaConfig {
    /// No limit at all (tests, benches, the demo).
    pub const fn unlimited() -> Self {
        Self {
            calls_per_second: 0,
            call_burst: 0,
            messages_per_day: 0,
        }
    }
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            calls_per_second: 1000,
            call_burst: 2000,
            messages_per_day: 0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("data"),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            server: ServerConfig::default(),
            telemetry: TelemetryConfig::default(),
            events: EventsConfig::default(),
            clients: ClientsConfig::default(),
            delivery: DeliveryConfig::default(),
            campaigns: CampaignsConfig::default(),
            quotas: QuotaConfig::default(),
        }
    }
}

/// Database settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`. `{service}` is replaced by the service name; empty
    /// means one SQLite file per service under the data folder. On PostgreSQL each service
    /// keeps its tables in a schema of its own name.
    pub url: String,
    /// Connections per service pool.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 10,
        }
    }
}

impl DatabaseConfig {
    /// The database URL of one service.
    pub fn url_for(&self, service: &str, data_dir: &Path) -> String {
        if self.url.is_empty() {
            format!("sqlite://{}/{service}.db?mode=rwc", data_dir.display())
        } else {
            self.url.replace("{service}", service)
        }
    }
}

/// Token settings. Tokens are EdDSA (Ed25519) JWTs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// PEM public key that verifies tokens; empty means `<data_dir>/keys/token.pub.pem`.
    pub public_key_file: PathBuf,
    /// PEM PKCS#8 private key that signs tokens (only the process that issues tokens needs
    /// it); empty means `<data_dir>/keys/token.key.pem`.
    pub private_key_file: PathBuf,
    /// Expected `iss` claim.
    pub issuer: String,
    /// Lifetime of tenant tokens issued by `winback tenant create`, in days.
    pub token_ttl_days: u32,
    /// Service credential (a JWT with scope `service`) this process uses to call the other
    /// services; empty means `<data_dir>/keys/service.jwt`, written by `winback keys init`.
    pub service_token_file: PathBuf,
    /// AES-256-GCM keys that seal provider secrets at rest (`secrets`); empty means
    /// `<data_dir>/keys/secrets.key`, created on first start or by `winback keys init`.
    pub secrets_key_file: PathBuf,
    /// How often each service re-reads the revoked API keys from the platform database,
    /// in milliseconds: a revoked key fails everywhere within this time.
    pub revocation_poll_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            public_key_file: PathBuf::new(),
            private_key_file: PathBuf::new(),
            issuer: "winback".into(),
            token_ttl_days: 365,
            service_token_file: PathBuf::new(),
            secrets_key_file: PathBuf::new(),
            revocation_poll_ms: 1000,
        }
    }
}

impl AuthConfig {
    /// Path of the public key.
    pub fn public_key_path(&self, data_dir: &Path) -> PathBuf {
        or_default(&self.public_key_file, data_dir, "keys/token.pub.pem")
    }

    /// Path of the private key.
    pub fn private_key_path(&self, data_dir: &Path) -> PathBuf {
        or_default(&self.private_key_file, data_dir, "keys/token.key.pem")
    }

    /// Path of the service credential.
    pub fn service_token_path(&self, data_dir: &Path) -> PathBuf {
        or_default(&self.service_token_file, data_dir, "keys/service.jwt")
    }

    /// Path of the secrets key file.
    pub fn secrets_key_path(&self, data_dir: &Path) -> PathBuf {
        or_default(&self.secrets_key_file, data_dir, "keys/secrets.key")
    }
}

fn or_default(path: &Path, data_dir: &Path, default: &str) -> PathBuf {
    if path.as_os_str().is_empty() {
        data_dir.join(default)
    } else {
        path.to_path_buf()
    }
}

/// gRPC server limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Deadline of a call, in milliseconds; calls with a streaming request (imports) get
    /// only the caller's own `grpc-timeout`.
    pub request_timeout_ms: u64,
    /// Largest message a service accepts or sends, in bytes.
    pub max_message_bytes: usize,
    /// Concurrent requests per client connection.
    pub concurrency_per_connection: usize,
    /// How long shutdown waits for in-flight calls, in milliseconds.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            request_timeout_ms: 30_000,
            max_message_bytes: 16 * 1024 * 1024,
            concurrency_per_connection: 256,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logs, traces and metrics. Traces and metrics go over OTLP when the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` variable is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `pretty` or `json`.
    pub log_format: LogFormat,
    /// `tracing` filter, e.g. `info,winback=debug`.
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info,sea_orm_migration=warn".into(),
        }
    }
}

/// Event feed settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// How often a feed with no news looks again, in milliseconds.
    pub poll_interval_ms: u64,
    /// Events read from the outbox per query.
    pub batch_size: u32,
    /// How events travel between services: `feed` (each service serves its outbox as the
    /// gRPC `Subscribe` stream, the embedded default) or `jetstream` (each service relays
    /// its outbox to NATS JetStream; consumers are durable JetStream consumers).
    pub transport: EventTransportKind,
    /// NATS JetStream settings, read when `transport = "jetstream"`.
    pub jetstream: JetStreamConfig,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 200,
            batch_size: 500,
            transport: EventTransportKind::Feed,
            jetstream: JetStreamConfig::default(),
        }
    }
}

/// How events travel between services.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EventTransportKind {
    /// The gRPC `Subscribe` feed of each service's outbox.
    #[default]
    Feed,
    /// NATS JetStream streams, one per source service.
    Jetstream,
}

/// Where the JetStream server is and how the streams are named and kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Streams are `<PREFIX>_<SOURCE>` with subjects `<prefix>.<source>.<tenant>.<type>`;
    /// two stacks on one NATS server need two prefixes.
    pub prefix: String,
    /// How long a consumer has to acknowledge an event before JetStream hands it to
    /// another replica (a replica that died holding it), in milliseconds.
    pub ack_wait_ms: u64,
    /// How long a stream keeps events, in hours; a consumer further behind than this has
    /// lost the events in between (it logs the gap and goes on).
    pub max_age_hours: u64,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "winback".into(),
            ack_wait_ms: 30_000,
            max_age_hours: 24 * 7,
        }
    }
}

/// Delivery settings: the outbox workers and the tracking/callback HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Address of the HTTP server for opens, clicks, unsubscribes and provider callbacks;
    /// unset means the gRPC `listen` host with the next port (50052 beside 50051), and
    /// port 0 any free port.
    pub tracking_listen: Option<SocketAddr>,
    /// The public base URL of that server, as recipients and providers reach it; empty
    /// means `http://` and the address it listens on (loopback for an unspecified host).
    pub public_url: String,
    /// Secret for signing tracking links; empty means a random one kept in
    /// `<data_dir>/keys/tracking.key` (created by `winback keys init` or on first start;
    /// an older `<data_dir>/tracking.key` is still read). Links in mail already sent stay
    /// valid only while this secret does.
    pub tracking_secret: String,
    /// SMTP server for the email of tenants that configured no email provider, as
    /// `host:port` (plain SMTP, for a local catcher such as Mailpit); empty writes their
    /// email to the file sink.
    pub default_smtp: String,
    /// From address of that default SMTP server's mail.
    pub default_smtp_from: String,
    /// How often an idle worker looks for due messages, in milliseconds.
    pub poll_interval_ms: u64,
    /// Messages a worker claims at once.
    pub claim_batch: u32,
    /// How long a claimed message is reserved for its worker, in milliseconds; after that
    /// another worker may take it (the first one crashed).
    pub lease_ms: u64,
    /// Attempts before a transiently failing message is given up as failed.
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubles with each attempt (with jitter).
    pub retry_base_ms: u64,
    /// Longest retry delay in milliseconds.
    pub retry_max_ms: u64,
    /// Whether this process runs delivery workers (off for an API-only replica).
    pub workers: bool,
    /// How long a provider may take to answer one send, in milliseconds; longer is a
    /// transient failure (retried).
    pub provider_timeout_ms: u64,
}

impl DeliveryConfig {
    /// Where the tracking server listens for a gRPC server on `grpc`: the configured
    /// address, else the same host and the next port (any free port when `grpc`'s is 0).
    pub fn tracking_address(&self, grpc: SocketAddr) -> SocketAddr {
        self.tracking_listen.unwrap_or_else(|| {
            let port = match grpc.port() {
                0 | u16::MAX => 0,
                p => p + 1,
            };
            SocketAddr::new(grpc.ip(), port)
        })
    }

    /// The public base URL for a tracking server bound to `bound`.
    pub fn public_base(&self, bound: SocketAddr) -> String {
        if !self.public_url.is_empty() {
            return self.public_url.clone();
        }
        let host = if bound.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), bound.port())
        } else {
            bound
        };
        format!("http://{host}")
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            tracking_listen: None,
            public_url: String::new(),
            tracking_secret: String::new(),
            default_smtp: String::new(),
            default_smtp_from: "winback@localhost".into(),
            poll_interval_ms: 200,
            claim_batch: 200,
            lease_ms: 30_000,
            max_attempts: 8,
            retry_base_ms: 1_000,
            retry_max_ms: 3_600_000,
            workers: true,
            provider_timeout_ms: 10_000,
        }
    }
}

/// Campaigns settings: the step workers that run due chain steps, and the event consumers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CampaignsConfig {
    /// How often an idle step worker looks for due steps, in milliseconds.
    pub poll_interval_ms: u64,
    /// Due steps a worker claims at once (executed together: one coupon batch per offer,
    /// one send batch, one commit).
    pub claim_batch: u32,
    /// Step workers in this process (each claims its own batches; 0 for an API-only replica).
    pub workers: u32,
    /// How long a claimed step is reserved for its worker, in milliseconds; after that another
    /// worker takes it over (the first one crashed) and repeats it with the same keys.
    pub lease_ms: u64,
    /// Whether this process consumes the other services' events (purchases, consent,
    /// segment changes, message statuses, redemptions).
    pub consume_events: bool,
    /// Fault injection for crash tests only: `"after_coupon"` aborts the process right after
    /// a step's coupons are issued and before its messages are sent. Empty in production.
    pub crash_point: String,
}

impl Default for CampaignsConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 50,
            claim_batch: 500,
            // Several claim batches in flight: while one waits on offers and delivery the
            // others execute (PostgreSQL, 2 cores: 1,610 steps/s with one, 2,620 with four;
            // at 2,000 due a second the p99 due → started lag is 1.05 s with two, 0.18 s
            // with four).
            workers: 4,
            lease_ms: 60_000,
            consume_events: true,
            crash_point: String::new(),
        }
    }
}

/// Addresses of the other services (`http://host:port`). Empty means this process's own
/// listen address: the embedded mode, where services still talk through gRPC.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsConfig {
    /// Profiles service.
    pub profiles: String,
    /// Segmentation service.
    pub segmentation: String,
    /// Campaigns service.
    pub campaigns: String,
    /// Offers service.
    pub offers: String,
    /// Delivery service.
    pub delivery: String,
}

/// Another service this one calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Profiles.
    Profiles,
    /// Segmentation.
    Segmentation,
    /// Campaigns.
    Campaigns,
    /// Offers.
    Offers,
    /// Delivery.
    Delivery,
}

impl Config {
    /// Where `peer` is: its `clients.*` URL, or this process's own listen address (an
    /// unspecified IP becomes loopback).
    pub fn peer_url(&self, peer: Peer) -> String {
        let configured = match peer {
            Peer::Profiles => &self.clients.profiles,
            Peer::Segmentation => &self.clients.segmentation,
            Peer::Campaigns => &self.clients.campaigns,
            Peer::Offers => &self.clients.offers,
            Peer::Delivery => &self.clients.delivery,
        };
        if !configured.is_empty() {
            return configured.clone();
        }
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    /// Loads defaults, then `file` (or `./winback.toml` if it exists), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// The layered sources, for callers that add their own on top.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file(CONFIG_FILE))
            }
            None => {}
        }
        figment.merge(Env::prefixed("WINBACK_").split("__").filter(|key| {
            let section = key.as_str().split('.').next().unwrap_or_default();
            SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
        }))
    }

    /// Extracts and validates a configuration from layered sources.
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(|err| ConfigError::Load {
            key: if err.path.is_empty() {
                err.metadata
                    .as_ref()
                    .map(|m| m.name.to_string())
                    .unwrap_or_else(|| "<root>".into())
            } else {
                err.path.join(".")
            },
            reason: err.kind.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules a parsed configuration must follow.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        let url = &self.database.url;
        if !(url.is_empty()
            || url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return invalid("database.url", "must start with sqlite: or postgres://");
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be at least 1");
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        if self.auth.issuer.is_empty() {
            return invalid("auth.issuer", "must not be empty");
        }
        if self.auth.token_ttl_days == 0 {
            return invalid("auth.token_ttl_days", "must be at least 1");
        }
        if self.quotas.calls_per_second > 0 && self.quotas.call_burst == 0 {
            return invalid(
                "quotas.call_burst",
                "must be at least 1 when calls are limited",
            );
        }
        if !(100..=60_000).contains(&self.auth.revocation_poll_ms) {
            return invalid("auth.revocation_poll_ms", "must be 100 to 60000");
        }
        if self.server.request_timeout_ms == 0 {
            return invalid("server.request_timeout_ms", "must be greater than 0");
        }
        if self.server.max_message_bytes < 1024 {
            return invalid("server.max_message_bytes", "must be at least 1024");
        }
        if self.server.concurrency_per_connection == 0 {
            return invalid("server.concurrency_per_connection", "must be at least 1");
        }
        if self.campaigns.poll_interval_ms == 0 {
            return invalid("campaigns.poll_interval_ms", "must be greater than 0");
        }
        if self.campaigns.claim_batch == 0 || self.campaigns.claim_batch > 5_000 {
            return invalid("campaigns.claim_batch", "must be between 1 and 5000");
        }
        if !matches!(self.campaigns.crash_point.as_str(), "" | "after_coupon") {
            return invalid("campaigns.crash_point", "must be empty or \"after_coupon\"");
        }
        if self.delivery.poll_interval_ms == 0 {
            return invalid("delivery.poll_interval_ms", "must be greater than 0");
        }
        if self.delivery.claim_batch == 0 || self.delivery.claim_batch > 10_000 {
            return invalid("delivery.claim_batch", "must be between 1 and 10000");
        }
        if self.delivery.max_attempts == 0 {
            return invalid("delivery.max_attempts", "must be at least 1");
        }
        if !self.delivery.default_smtp.is_empty()
            && self
                .delivery
                .default_smtp
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return invalid("delivery.default_smtp", "must be host:port");
        }
        if !self.delivery.public_url.is_empty()
            && !self.delivery.public_url.starts_with("http://")
            && !self.delivery.public_url.starts_with("https://")
        {
            return invalid("delivery.public_url", "must be an http(s) URL");
        }
        if self.events.poll_interval_ms == 0 {
            return invalid("events.poll_interval_ms", "must be greater than 0");
        }
        if self.events.batch_size == 0 || self.events.batch_size > 10_000 {
            return invalid("events.batch_size", "must be between 1 and 10000");
        }
        if self.events.transport == EventTransportKind::Jetstream {
            let js = &self.events.jetstream;
            if !js.url.starts_with("nats://") && !js.url.starts_with("tls://") {
                return invalid("events.jetstream.url", "must be a nats:// or tls:// URL");
            }
            if js.prefix.is_empty()
                || !js
                    .prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return invalid(
                    "events.jetstream.prefix",
                    "must be letters, digits, '_' or '-'",
                );
            }
            if js.ack_wait_ms < 100 {
                return invalid("events.jetstream.ack_wait_ms", "must be at least 100");
            }
            if js.max_age_hours == 0 {
                return invalid("events.jetstream.max_age_hours", "must be greater than 0");
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_filter).is_err() {
            return invalid("telemetry.log_filter", "is not a valid tracing filter");
        }
        for (key, value) in [
            ("clients.profiles", &self.clients.profiles),
            ("clients.segmentation", &self.clients.segmentation),
            ("clients.campaigns", &self.clients.campaigns),
            ("clients.offers", &self.clients.offers),
            ("clients.delivery", &self.clients.delivery),
        ] {
            if !(value.is_empty() || value.starts_with("http://") || value.starts_with("https://"))
            {
                return invalid(key, "must be an http:// or https:// URL");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail API returns its large error type by value.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in_jail(
        f: impl FnOnce(&mut Jail) -> Result<(), figment::Error>,
    ) -> Result<Config, ConfigError> {
        let mut result = None;
        Jail::expect_with(|jail| {
            f(jail)?;
            result = Some(Config::load(None));
            Ok(())
        });
        result.expect("jail ran")
    }

    #[test]
    fn defaults_are_valid_and_listen_on_50051() {
        let config = load_in_jail(|_| Ok(())).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.listen.port(), 50051);
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let config = load_in_jail(|jail| {
            jail.create_file(
                CONFIG_FILE,
                "data_dir = \"/srv/winback\"\n[server]\nrequest_timeout_ms = 5000\n",
            )?;
            jail.set_env("WINBACK_SERVER__REQUEST_TIMEOUT_MS", "7000");
            jail.set_env("WINBACK_TEST_POSTGRES_URL", "not configuration");
            Ok(())
        })
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/winback"));
        assert_eq!(config.server.request_timeout_ms, 7000);
    }

    #[test]
    fn a_value_that_does_not_parse_names_its_key() {
        let err = load_in_jail(|jail| {
            jail.set_env("WINBACK_SERVER__REQUEST_TIMEOUT_MS", "soon");
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.key(), "server.request_timeout_ms");
        assert!(
            err.to_string().contains("server.request_timeout_ms"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_in_the_file_is_named() {
        let err = load_in_jail(|jail| {
            jail.create_file(CONFIG_FILE, "[server]\nrequest_timeout = 5\n")?;
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("request_timeout"), "{err}");
    }

    #[test]
    fn every_section_is_read_from_the_environment() {
        let config = load_in_jail(|jail| {
            jail.set_env("WINBACK_DELIVERY__LEASE_MS", "1500");
            jail.set_env("WINBACK_EVENTS__BATCH_SIZE", "7");
            Ok(())
        })
        .unwrap();
        assert_eq!(config.delivery.lease_ms, 1500);
        assert_eq!(config.events.batch_size, 7);
    }

    #[test]
    fn a_rule_violation_names_its_key() {
        let err = load_in_jail(|jail| {
            jail.set_env("WINBACK_DATABASE__URL", "mysql://localhost/winback");
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.key(), "database.url");
        let err = load_in_jail(|jail| {
            jail.set_env("WINBACK_EVENTS__BATCH_SIZE", "0");
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.key(), "events.batch_size");
    }

    #[test]
    fn a_peer_is_the_configured_url_or_this_process() {
        let mut config = Config {
            listen: "0.0.0.0:50051".parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(config.peer_url(Peer::Offers), "http://127.0.0.1:50051");
        config.clients.offers = "http://offers:50051".into();
        assert_eq!(config.peer_url(Peer::Offers), "http://offers:50051");
        assert_eq!(config.peer_url(Peer::Delivery), "http://127.0.0.1:50051");
    }

    #[test]
    fn database_url_is_per_service() {
        let mut db = DatabaseConfig::default();
        assert_eq!(
            db.url_for("offers", Path::new("/d")),
            "sqlite:///d/offers.db?mode=rwc"
        );
        db.url = "postgres://pg/winback_{service}".into();
        assert_eq!(
            db.url_for("offers", Path::new("/d")),
            "postgres://pg/winback_offers"
        );
    }
}
