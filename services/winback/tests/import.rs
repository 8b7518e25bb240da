//! `winback import` against a running `winback up`: good rows kept, bad rows reported by
//! line, data readable through gRPC afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use winback_platform::grpc::CallCredentials;
use winback_proto::profiles::GetFactsRequest;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;

#[tokio::test]
async fn import_keeps_every_good_row_and_reports_the_bad_ones_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut up = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("WINBACK_TELEMETRY__LOG_FORMAT", "json")
        // Stacks run side by side in tests: each its own tracking port.
        .env("WINBACK_DELIVERY__TRACKING_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("winback is serving") {
                return;
            }
        }
        panic!("winback up exited");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let created = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(["tenant", "create", "Home goods", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let tenant = created["tenant_id"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap().to_owned();

    let customers = dir.path().join("customers.csv");
    std::fs::write(
        &customers,
        "customer_id,name,email,phone,time_zone,tags,email_consent,loyalty_card\n\
         c1,Anna,anna@example.ru,+79161234567,Europe/Moscow,vip;new,yes,A-1\n\
         c2,Boris,not-an-email,,,,,\n\
         c3,Vera,vera@example.ru,,Asia/Yekaterinburg,,no,\n",
    )
    .unwrap();
    let orders = dir.path().join("orders.csv");
    std::fs::write(
        &orders,
        "order_id,customer_id,placed_at,total,currency,sku,category,quantity,unit_price\n\
         o1,c1,2025-03-01T14:30:00+03:00,1500.50,RUB,s1,kitchen,1,1000.50\n\
         o1,c1,2025-03-01T14:30:00+03:00,1500.50,RUB,s2,bath,1,500\n\
         o2,c1,2025-04-01,700,RUB,,,,\n\
         o3,ghost,2025-04-02,100,RUB,,,,\n\
         o4,c3,2025-04-03,12.345,RUB,,,,\n\
         o5,c3,yesterday,100,RUB,,,,\n\
         o6,c3,2025-05-01,250,RUB,s9,garden,2,125\n",
    )
    .unwrap();
    let events = dir.path().join("events.csv");
    std::fs::write(
        &events,
        "event_id,customer_id,occurred_at,kind,value,currency\n\
         e1,c1,2025-05-01,cart_abandoned,4200,RUB\n\
         e2,ghost,2025-05-02,site_visited,,\n\
         e3,c3,2025-05-03,teleported,,\n",
    )
    .unwrap();

    let run = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_winback"));
        cmd.args([
            "import",
            "--json",
            "--tenant",
            &tenant,
            "--addr",
            &format!("http://127.0.0.1:{port}"),
        ])
        .arg(&customers)
        .arg(&orders)
        .arg(&events)
        .env("WINBACK_TOKEN", &token);
        cmd
    };
    let output = run().output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let file = |i: usize| &report[i];
    assert_eq!(
        (file(0)["rows"].as_u64(), file(0)["stored"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(
        file(1)["stored"].as_u64(),
        Some(3),
        "o1 (two lines), o2, o6"
    );
    assert_eq!(file(2)["stored"].as_u64(), Some(1));
    let rejected: Vec<(String, u64)> = report
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["rejected"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["file"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned(),
                r["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            ("customers.csv".to_owned(), 3),
            ("orders.csv".to_owned(), 5),
            ("orders.csv".to_owned(), 6),
            ("orders.csv".to_owned(), 7),
            ("events.csv".to_owned(), 3),
            ("events.csv".to_owned(), 4),
        ]
    );

    // The data is there.
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        ProfilesServiceClient::with_interceptor(channel, CallCredentials::bearer(&token).unwrap());
    let facts = client
        .get_facts(GetFactsRequest {
            customer_id: "c1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .facts
        .unwrap();
    assert_eq!((facts.order_count, facts.total_spent_minor), (2, 220_050));
    assert_eq!(facts.last_cart_value_minor, 420_000);
    assert!(facts.channels[0].advertising, "email consent imported");
    assert_eq!(facts.top_categories, vec!["kitchen", "bath"]);

    // A second run stores nothing new.
    let again: serde_json::Value =
        serde_json::from_slice(&run().output().await.unwrap().stdout).unwrap();
    assert_eq!(again[1]["stored"].as_u64(), Some(0));
    assert_eq!(again[1]["duplicates"].as_u64(), Some(3));

    // `winback segments --recompute` scores the imported customers; `models fit` fits them.
    let addr = format!("http://127.0.0.1:{port}");
    let segments = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args([
            "segments",
            "--recompute",
            "--json",
            "--tenant",
            &tenant,
            "--addr",
            &addr,
        ])
        .env("WINBACK_TOKEN", &token)
        .output()
        .await
        .unwrap();
    assert!(
        segments.status.success(),
        "{}",
        String::from_utf8_lossy(&segments.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&segments.stdout).unwrap();
    let scored: i64 = summary["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["customers"].as_i64().unwrap())
        .sum();
    assert_eq!(scored, 2, "c1 and c3");
    assert_eq!(summary["currency"], "RUB");
    assert_eq!(summary["grid"].as_array().unwrap().len(), 25);
    let table = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args([
            "segments", "--locale", "ru", "--tenant", &tenant, "--addr", &addr,
        ])
        .env("WINBACK_TOKEN", &token)
        .output()
        .await
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("Recency × frequency") && table.contains("R5"),
        "{table}"
    );
    let fit = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args([
            "models", "fit", "--json", "--tenant", &tenant, "--addr", &addr,
        ])
        .env("WINBACK_TOKEN", &token)
        .output()
        .await
        .unwrap();
    assert!(
        fit.status.success(),
        "{}",
        String::from_utf8_lossy(&fit.stderr)
    );
    let fit: serde_json::Value = serde_json::from_slice(&fit.stdout).unwrap();
    assert_eq!(fit["bg_nbd"]["customers"], 2);
    assert_eq!(fit["time_unit_days"], 1.0);

    let pid = up.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    up.wait().await.unwrap();
}
