//! `winback`: all services in one process, and the operator CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use winback_platform::clock::SystemClock;
use winback_platform::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "winback",
    version,
    about = "Finds the customers who stopped buying and brings them back"
)]
struct Cli {
    /// Configuration file (default: ./winback.toml if present).
    #[arg(long, global = true, env = "WINBACK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs all five services in one process on one port.
    Up {
        /// Folder for SQLite files and keys.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Imports customers, orders and engagement events from CSV into a running stack
    /// (columns: docs/import.md); keeps every good row and reports the rejected ones.
    Import {
        /// Tenant id the rows belong to.
        #[arg(long)]
        tenant: String,
        /// customers.csv
        customers: PathBuf,
        /// orders.csv
        orders: PathBuf,
        /// events.csv (optional)
        events: Option<PathBuf>,
        /// Address of the stack.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// Token of the tenant; without one, a short-lived token is signed with the data
        /// folder's private key.
        #[arg(long, env = "WINBACK_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Folder with the keys (when no token is given).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows a tenant's segments: sizes, lifecycle states and the recency × frequency grid.
    Segments {
        #[command(flatten)]
        target: Target,
        /// Recompute first (optionally as of `--as-of`).
        #[arg(long)]
        recompute: bool,
        /// Recompute as of this time (RFC 3339); implies `--recompute`.
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        /// Recompute only the customers whose facts changed since the latest run (falls back
        /// to a full recompute when it cannot); implies `--recompute`.
        #[arg(long, conflicts_with = "as_of")]
        incremental: bool,
        /// Locale of the segment names (e.g. "ru").
        #[arg(long, default_value = "en")]
        locale: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runs the whole job on a generated shop: segments, win-back chains over 45 days on a
    /// manual clock, and the report (printed, report.json, report.html, outbox/).
    Demo {
        /// Customers to generate.
        #[arg(long, default_value_t = 50_000)]
        customers: usize,
        /// Seed of the shop and of the response model.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output folder (replaced).
        #[arg(long, default_value = "winback-demo")]
        out: PathBuf,
        /// Days the clock moves through.
        #[arg(long, default_value_t = 45)]
        days: i64,
        /// Replays your own history instead of a generated shop: a folder with
        /// customers.csv, orders.csv and optionally events.csv (columns: docs/import.md).
        #[arg(long, value_name = "DIR")]
        import: Option<PathBuf>,
    },
    /// Win-back campaigns.
    Campaign {
        #[command(subcommand)]
        command: CampaignCommand,
    },
    /// Customer-base models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Manages tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Asks a running server for its health (the compose health check); exits 0 when SERVING.
    Health {
        /// Server address.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// Fully qualified service name; empty asks for the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Manages token keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// `winback campaign …`.
#[derive(Debug, Subcommand)]
enum CampaignCommand {
    /// Prints a campaign's report: per variant, step and segment, with uplift and ROI.
    Report {
        #[command(flatten)]
        target: Target,
        /// Campaign id.
        campaign_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which stack and tenant a client command talks to.
#[derive(Debug, clap::Args)]
struct Target {
    /// Tenant id.
    #[arg(long)]
    tenant: String,
    /// Address of the stack.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Token of the tenant; without one, a short-lived token is signed with the data
    /// folder's private key.
    #[arg(long, env = "WINBACK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Folder with the keys (when no token is given).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Target {
    fn token(&self, config_file: Option<&PathBuf>, scopes: &[&str]) -> anyhow::Result<String> {
        match &self.token {
            Some(token) => Ok(token.clone()),
            None => {
                let config = load_config(config_file, self.data_dir.clone(), None)?;
                Ok(winback::admin::signer(&config)?.tenant_token(&self.tenant, scopes, 3600)?)
            }
        }
    }
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Fits BG/NBD, MBG/NBD and Gamma-Gamma on the tenant's customers and prints them.
    Fit {
        #[command(flatten)]
        target: Target,
        /// Fit as of this time (RFC 3339); default now.
        #[arg(long)]
        as_of: Option<chrono::DateTime<chrono::Utc>>,
        /// Time unit in days (1 = daily, 7 = weekly); default the tenant's policy.
        #[arg(long)]
        time_unit_days: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Creates a tenant and prints `{"tenant_id": …, "token": …}`.
    Create {
        /// The tenant's name.
        name: String,
        /// Folder for SQLite files and keys.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Lists tenants as JSON lines.
    List {
        /// Folder for SQLite files and keys.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Manages a tenant's API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Sets a tenant's own quotas (0 = no limit) and prints them; every service applies
    /// them within `auth.revocation_poll_ms`.
    Quota {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Calls per second to one service process.
        #[arg(long)]
        calls_per_second: Option<u32>,
        /// Calls at once above that rate.
        #[arg(long)]
        call_burst: Option<u32>,
        /// Messages delivery accepts per UTC day.
        #[arg(long)]
        messages_per_day: Option<u32>,
        /// Folder for SQLite files and keys.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Creates an API key and prints it as JSON, with its token (shown only this once).
    Create {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Name for people, e.g. "crm sync".
        #[arg(long)]
        name: String,
        /// A scope (`campaigns:read`, `offers:write`, …) or a preset: all, read-only,
        /// campaigns, ingest. Repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime in days.
        #[arg(long, default_value_t = 90)]
        ttl_days: u32,
        /// Folder for SQLite files and keys.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Lists the tenant's keys as JSON lines (never their tokens).
    List {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Folder for SQLite files and keys.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Revokes a key: every service refuses it within `auth.revocation_poll_ms`.
    Revoke {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Key id (`k_…`).
        key_id: String,
        /// Folder for SQLite files and keys.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Generates the token key pair, the service credential and the secrets key unless
    /// they exist (the stack's init step).
    Init {
        /// Folder for the keys.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Puts a new key first in the secrets key file; the old keys stay to open what they
    /// sealed, and delivery re-seals its channel settings under the new key at its next
    /// start (then the old lines may be removed).
    RotateSecrets {
        /// Folder for the keys.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn load_config(
    file: Option<&PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
) -> anyhow::Result<Config> {
    let mut config = Config::load(file.map(PathBuf::as_path))?;
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = listen {
        config.listen = addr;
    }
    config.validate()?;
    Ok(config)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("winback: {}", explain(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error as a person wants to read it: plain words, the causes after a colon, and for a
/// server that does not answer, what to check — not a debug dump.
fn explain(error: &anyhow::Error) -> String {
    for cause in error.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>()
            && status.code() == tonic::Code::Unavailable
        {
            return format!(
                "no Winback server answered ({}): is `winback up` running, and is --addr its address?",
                status.message()
            );
        }
    }
    format!("{error:#}")
}

async fn run_key_command(config_file: Option<&PathBuf>, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create {
            tenant,
            name,
            scopes,
            ttl_days,
            data_dir,
        } => {
            let config = load_config(config_file, data_dir, None)?;
            let created = winback::admin::create_key(
                &config,
                winback_platform::api_keys::KeyRequest {
                    tenant_id: &tenant,
                    name: &name,
                    scopes: &scopes,
                    ttl_days,
                },
            )
            .await?;
            println!("{}", serde_json::to_string(&created)?);
        }
        KeyCommand::List { tenant, data_dir } => {
            let config = load_config(config_file, data_dir, None)?;
            for key in winback::admin::list_keys(&config, &tenant).await? {
                println!("{}", serde_json::to_string(&key)?);
            }
        }
        KeyCommand::Revoke {
            tenant,
            key_id,
            data_dir,
        } => {
            let config = load_config(config_file, data_dir, None)?;
            winback::admin::revoke_key(&config, &tenant, &key_id).await?;
            println!("revoked {key_id}");
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up { data_dir, listen } => {
            let config = load_config(cli.config.as_ref(), data_dir, listen)?;
            let _telemetry = winback_platform::telemetry::init(&config.telemetry, "winback")?;
            let shutdown = winback_platform::shutdown::on_signal();
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("listen on {}", config.listen))?;
            winback::embedded::run(config, Arc::new(SystemClock), listener, shutdown).await?;
        }
        Command::Tenant {
            command: TenantCommand::Create { name, data_dir },
        } => {
            let config = load_config(cli.config.as_ref(), data_dir, None)?;
            let created = winback::admin::create_tenant(&config, &name).await?;
            println!("{}", serde_json::to_string(&created)?);
        }
        Command::Tenant {
            command: TenantCommand::List { data_dir },
        } => {
            let config = load_config(cli.config.as_ref(), data_dir, None)?;
            for tenant in winback::admin::registry(&config).await?.list().await? {
                println!("{}", serde_json::to_string(&tenant)?);
            }
        }
        Command::Tenant {
            command: TenantCommand::Key { command },
        } => run_key_command(cli.config.as_ref(), command).await?,
        Command::Tenant {
            command:
                TenantCommand::Quota {
                    tenant,
                    calls_per_second,
                    call_burst,
                    messages_per_day,
                    data_dir,
                },
        } => {
            let config = load_config(cli.config.as_ref(), data_dir, None)?;
            let quota = winback::admin::set_quota(
                &config,
                &tenant,
                winback::admin::QuotaChange {
                    calls_per_second,
                    call_burst,
                    messages_per_day,
                },
            )
            .await?;
            println!("{}", serde_json::to_string(&quota)?);
        }
        Command::Import {
            tenant,
            customers,
            orders,
            events,
            addr,
            token,
            data_dir,
            json,
        } => {
            let token = match token {
                Some(token) => token,
                None => {
                    let config = load_config(cli.config.as_ref(), data_dir, None)?;
                    winback::admin::signer(&config)?.tenant_token(
                        &tenant,
                        &["profiles:read", "profiles:write"],
                        3600,
                    )?
                }
            };
            let mut client = winback::import::client(&addr, &token)?;
            let mut reports = vec![
                winback::import::customers(&mut client, &customers).await?,
                winback::import::orders(&mut client, &orders).await?,
            ];
            if let Some(events) = events {
                reports.push(winback::import::events(&mut client, &events).await?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    println!(
                        "{}: {} rows, {} stored, {} already there, {} rejected",
                        r.file,
                        r.rows,
                        r.stored,
                        r.duplicates,
                        r.rejected.len()
                    );
                }
                for rejected in reports.iter().flat_map(|r| &r.rejected) {
                    println!("  {}:{}: {}", rejected.file, rejected.line, rejected.reason);
                }
            }
        }
        Command::Demo {
            customers,
            seed,
            out,
            days,
            import,
        } => {
            // The services' warnings (and nothing chattier) show above the progress bars.
            let telemetry = winback_platform::config::TelemetryConfig {
                log_filter: "warn".into(),
                ..Default::default()
            };
            let _telemetry =
                winback_platform::telemetry::init_with_endpoint(&telemetry, "winback-demo", None)?;
            let outcome = winback::demo::run(winback::demo::DemoOptions {
                customers,
                seed,
                out,
                days,
                progress: true,
                import,
            })
            .await?;
            let total = outcome.report.total.clone().unwrap_or_default();
            println!(
                "\nDone in {:.1} s: {} customers treated, {} held out; return rate {} against {}; {}.",
                outcome.seconds,
                total.enrolled,
                total.held_out,
                winback::campaign_report::percent(&total.return_rate),
                winback::campaign_report::percent(&total.holdout_return_rate),
                winback::campaign_report::summary_line(&total)
            );
            for path in &outcome.written {
                println!("  {}", path.display());
            }
        }
        Command::Campaign {
            command:
                CampaignCommand::Report {
                    target,
                    campaign_id,
                    json,
                },
        } => {
            let token = target.token(cli.config.as_ref(), &["campaigns:read"])?;
            let mut client = winback::campaign_report::client(&target.addr, &token)?;
            let report = client
                .get_campaign_report(winback_proto::campaigns::GetCampaignReportRequest {
                    campaign_id,
                })
                .await?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&winback::campaign_report::to_json(&report))?
                );
            } else {
                print!("{}", winback::campaign_report::render(&report));
            }
        }
        Command::Segments {
            target,
            recompute,
            as_of,
            incremental,
            locale,
            json,
        } => {
            use winback_proto::segmentation::{GetSegmentSummaryRequest, RecomputeRequest};
            let token = target.token(
                cli.config.as_ref(),
                &["segmentation:read", "segmentation:write"],
            )?;
            let mut client = winback::segments::client(&target.addr, &token)?;
            if recompute || incremental || as_of.is_some() {
                let as_of = as_of.map(winback_platform::time::to_timestamp);
                let run = client
                    .recompute(RecomputeRequest { as_of, incremental })
                    .await?
                    .into_inner();
                eprintln!(
                    "recomputed {} {}customers: {} segment and {} lifecycle changes",
                    run.customers_scored,
                    if run.incremental { "changed " } else { "" },
                    run.segment_changes,
                    run.lifecycle_changes
                );
            }
            let summary = client
                .get_segment_summary(GetSegmentSummaryRequest {
                    locale,
                    history_limit: 0,
                })
                .await?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&winback::segments::summary_json(&summary))?
                );
            } else {
                print!("{}", winback::segments::render_summary(&summary));
            }
        }
        Command::Models {
            command:
                ModelsCommand::Fit {
                    target,
                    as_of,
                    time_unit_days,
                    json,
                },
        } => {
            use winback_proto::segmentation::FitModelsRequest;
            let token = target.token(
                cli.config.as_ref(),
                &["segmentation:read", "segmentation:write"],
            )?;
            let mut client = winback::segments::client(&target.addr, &token)?;
            let fit = client
                .fit_models(FitModelsRequest {
                    as_of: as_of.map(winback_platform::time::to_timestamp),
                    time_unit: time_unit_days.map(|d| prost_types::Duration {
                        seconds: i64::from(d) * 86_400,
                        nanos: 0,
                    }),
                    horizon: None,
                    probes: Vec::new(),
                })
                .await?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&winback::segments::fit_json(&fit))?
                );
            } else {
                print!("{}", winback::segments::render_fit(&fit));
            }
        }
        Command::Health { addr, service } => {
            let status = winback::admin::health(&addr, &service).await?;
            println!("{status}");
            if status != "SERVING" {
                std::process::exit(1);
            }
        }
        Command::Keys {
            command: KeysCommand::Init { data_dir },
        } => {
            let config = load_config(cli.config.as_ref(), data_dir, None)?;
            let created = winback::embedded::ensure_keys(&config)?;
            eprintln!(
                "{} {}",
                if created {
                    "generated"
                } else {
                    "kept existing"
                },
                config.auth.public_key_path(&config.data_dir).display()
            );
        }
        Command::Keys {
            command: KeysCommand::RotateSecrets { data_dir },
        } => {
            let config = load_config(cli.config.as_ref(), data_dir, None)?;
            let path = config.auth.secrets_key_path(&config.data_dir);
            let id = winback_platform::secrets::SecretBox::rotate(&path)?;
            eprintln!(
                "secrets key {id} now seals ({}); restart delivery to re-seal its settings",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_does_not_answer_is_said_plainly() {
        let down = anyhow::Error::from(tonic::Status::unavailable("tcp connect error"))
            .context("segments");
        assert_eq!(
            explain(&down),
            "no Winback server answered (tcp connect error): is `winback up` running, and is --addr its address?"
        );
        let other = anyhow::anyhow!("no such file").context("token key");
        assert_eq!(explain(&other), "token key: no such file");
    }
}
