//! `winback demo` on a small shop, then the invariants every run must keep, checked against
//! what the services stored: the holdout got nothing, no chain had more than five touches,
//! no customer more win-back chains than the cap, no message inside quiet hours in the
//! customer's own zone, no step sent or couponed twice, and the report's reach equals the
//! messages delivery stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};

use chrono::{NaiveTime, TimeZone, Timelike};
use winback::demo::{DemoOptions, run};

async fn rows(dir: &std::path::Path, service: &str, sql: &str) -> Vec<sea_orm::QueryResult> {
    let url = format!(
        "sqlite://{}?mode=ro",
        dir.join(format!("{service}.db")).display()
    );
    let db = winback_platform::db::connect(&url, service, 1)
        .await
        .unwrap();
    winback_platform::db::query(&db, sql, vec![]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_demo_keeps_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let outcome = run(DemoOptions {
        customers: 400,
        seed: 7,
        out: out.clone(),
        days: 21,
        progress: false,
        import: None,
    })
    .await
    .unwrap();
    for path in &outcome.written {
        assert!(path.exists(), "{} written", path.display());
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Return rate over time"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        json["campaign"]["total"]["enrolled"],
        outcome.report.total.clone().unwrap().enrolled
    );

    // Enrolments: state, time zone, whether win-back.
    let enrolments = rows(
        &out,
        "campaigns",
        "SELECT enrolment_id, customer_id, state, winback, time_zone FROM enrolments",
    )
    .await;
    let mut state = HashMap::new();
    let mut zone = HashMap::new();
    let mut chains: HashMap<String, usize> = HashMap::new();
    for r in &enrolments {
        let id: String = r.try_get("", "enrolment_id").unwrap();
        let customer: String = r.try_get("", "customer_id").unwrap();
        let s: i64 = r.try_get("", "state").unwrap();
        let winback: i64 = r.try_get("", "winback").unwrap();
        let tz: String = r.try_get("", "time_zone").unwrap();
        if winback == 1 && ![2, 6].contains(&s) {
            *chains.entry(customer.clone()).or_default() += 1;
        }
        zone.insert(customer, tz);
        state.insert(id, s);
    }
    assert!(
        chains.values().all(|n| *n <= 2),
        "no customer over the chain cap"
    );

    let messages = rows(
        &out,
        "delivery",
        "SELECT customer_id, channel, metadata, idempotency_key, created_at_us FROM messages",
    )
    .await;
    assert!(!messages.is_empty());
    let mut per_enrolment: HashMap<String, usize> = HashMap::new();
    let mut keys = HashSet::new();
    let mut touched = HashSet::new();
    for m in &messages {
        let metadata: String = m.try_get("", "metadata").unwrap();
        let metadata: HashMap<String, String> = serde_json::from_str(&metadata).unwrap();
        let enrolment = metadata["enrolment_id"].clone();
        assert_ne!(state[&enrolment], 2, "the holdout receives nothing");
        *per_enrolment.entry(enrolment.clone()).or_default() += 1;
        let key: String = m.try_get("", "idempotency_key").unwrap();
        assert!(keys.insert(key.clone()), "one message per step: {key}");
        assert_eq!(key, format!("{enrolment}:{}", metadata["step"]));
        if metadata["campaign_id"] == outcome.campaign_id {
            touched.insert(enrolment);
        }
        let channel: i64 = m.try_get("", "channel").unwrap();
        if channel == 5 {
            continue; // manager tasks are staff work, not a customer touch
        }
        let customer: String = m.try_get("", "customer_id").unwrap();
        let at: i64 = m.try_get("", "created_at_us").unwrap();
        let tz: chrono_tz::Tz = zone[&customer].parse().unwrap_or(chrono_tz::UTC);
        let local = tz.timestamp_micros(at).unwrap().time();
        let quiet = local >= NaiveTime::from_hms_opt(21, 0, 0).unwrap()
            || local < NaiveTime::from_hms_opt(9, 0, 0).unwrap();
        assert!(
            !quiet,
            "{customer} messaged at {:02}:{:02} local",
            local.hour(),
            local.minute()
        );
    }
    assert!(
        per_enrolment.values().all(|n| *n <= 5),
        "at most five touches a chain"
    );
    let coupons = rows(&out, "offers", "SELECT idempotency_key FROM coupons").await;
    let mut coupon_keys = HashSet::new();
    for c in &coupons {
        let key: String = c.try_get("", "idempotency_key").unwrap();
        assert!(coupon_keys.insert(key), "one coupon per step");
    }
    let total = outcome.report.total.unwrap();
    assert_eq!(
        total.touched as usize,
        touched.len(),
        "reach equals delivery's messages"
    );
    assert!(total.held_out > 0 && total.enrolled > 0);
}

/// `--import`: the user's CSV files replace the generated shop; the clock starts the day
/// after the last order, the sleeping customers get the chain, and every email carries
/// its stamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_history_runs_through_the_same_demo() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("history");
    std::fs::create_dir_all(&files).unwrap();
    let mut customers = String::from("customer_id,email,time_zone,email_consent\n");
    let mut orders = String::from("order_id,customer_id,placed_at,total,currency\n");
    for i in 0..60 {
        customers.push_str(&format!("c{i},c{i}@example.com,Asia/Vladivostok,yes\n"));
        // Three purchases a month apart; the last one 200 days before the last order of
        // the file, except for the regulars who bought in the final week.
        let last = if i < 10 { 360 } else { 160 };
        for k in 0..3 {
            let day = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap()
                + chrono::Duration::days(last - 30 * (2 - k));
            orders.push_str(&format!("o{i}-{k},c{i},{day},{},RUB\n", 1500 + 100 * k));
        }
    }
    // A row the import rejects and reports, without stopping.
    orders.push_str("bad,c1,not-a-date,10,RUB\n");
    std::fs::write(files.join("customers.csv"), customers).unwrap();
    std::fs::write(files.join("orders.csv"), orders).unwrap();
    let out = dir.path().join("demo");
    let outcome = run(DemoOptions {
        customers: 0,
        seed: 3,
        out: out.clone(),
        days: 21,
        progress: false,
        import: Some(files),
    })
    .await
    .unwrap();
    let scored: i64 = outcome.summary.segments.iter().map(|s| s.customers).sum();
    assert_eq!(
        scored, 60,
        "the bad order row is rejected, every customer kept"
    );
    let total = outcome.report.total.unwrap();
    assert!(total.enrolled > 0, "{total:?}");
    assert!(
        total.enrolled + total.held_out <= 50,
        "the regulars are not asleep"
    );
    let emails: Vec<String> = std::fs::read_dir(out.join("outbox").join(&outcome.tenant_id))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(!emails.is_empty());
    for email in &emails {
        assert!(email.contains("X-Winback-Campaign-Id:"), "{email}");
        assert!(email.contains("X-Winback-Step:"), "{email}");
        // Vladivostok is UTC+10 all year.
        assert!(email.contains("+10:00"), "{email}");
    }
}

/// One seed, one set of numbers: the holdout split is seeded (not by the fresh campaign
/// id) and the simulated customers draw by campaign, customer and step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_report() {
    let mut reports = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let outcome = run(DemoOptions {
            customers: 400,
            seed: 11,
            out: dir.path().join("demo"),
            days: 21,
            progress: false,
            import: None,
        })
        .await
        .unwrap();
        let mut json = winback::campaign_report::to_json(&outcome.report);
        json.as_object_mut().unwrap().remove("campaign_id");
        reports.push(json);
    }
    assert_eq!(reports[0], reports[1]);
    let total = &reports[0]["total"];
    assert!(total["opened"].as_i64() <= total["touched"].as_i64());
    for step in reports[0]["steps"].as_array().unwrap() {
        assert!(step["uplift_points"].is_null(), "{step}");
        assert!(
            !step["name"].as_str().unwrap().starts_with("step:"),
            "{step}"
        );
    }
}
