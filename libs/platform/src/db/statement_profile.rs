//! An opt-in count of the statements each service runs (`WINBACK_STATEMENT_PROFILE=1`):
//! how many times each SQL text ran and how long it took in all. A diagnostic for finding
//! what a workload asks of its databases; off, it costs nothing (no callback is set).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use sea_orm::DatabaseConnection;

/// The environment variable that turns the profile on.
pub const ENV: &str = "WINBACK_STATEMENT_PROFILE";

/// (service, SQL text) → (runs, total time).
type Profile = HashMap<(String, String), (u64, Duration)>;

static PROFILE: LazyLock<Mutex<Profile>> = LazyLock::new(Mutex::default);

/// Whether statements are being counted in this process.
pub fn enabled() -> bool {
    std::env::var_os(ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Counts the statements of `db` under `service` when the profile is on.
pub fn attach(db: &mut DatabaseConnection, service: &str) {
    if !enabled() {
        return;
    }
    let service = service.to_owned();
    db.set_metric_callback(move |info| {
        // The SQL text with its whitespace folded: one line per statement shape.
        let sql = info
            .statement
            .sql
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let sql: String = sql.chars().take(160).collect();
        if let Ok(mut profile) = PROFILE.lock() {
            let entry = profile.entry((service.clone(), sql)).or_default();
            entry.0 += 1;
            entry.1 += info.elapsed;
        }
    });
}

/// The `top` statement shapes by total time, one line each: service, runs, total ms, SQL.
pub fn report(top: usize) -> String {
    let Ok(profile) = PROFILE.lock() else {
        return String::new();
    };
    let mut rows: Vec<_> = profile.iter().collect();
    rows.sort_by_key(|(_, (_, total))| std::cmp::Reverse(*total));
    let runs: u64 = profile.values().map(|(n, _)| n).sum();
    let mut out = format!("{runs} statements in {} shapes\n", profile.len());
    for ((service, sql), (n, total)) in rows.into_iter().take(top) {
        out.push_str(&format!(
            "{service:<12} {n:>9} {:>10.1} ms  {sql}\n",
            total.as_secs_f64() * 1e3
        ));
    }
    out
}
