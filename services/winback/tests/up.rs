//! `winback up` as a user runs it: a real process, a plain gRPC client, a real signal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use winback_proto::service_names;

const FIVE: [&str; 5] = [
    service_names::PROFILES,
    service_names::SEGMENTATION,
    service_names::CAMPAIGNS,
    service_names::OFFERS,
    service_names::DELIVERY,
];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `winback up` and waits for its one "serving" log line.
async fn up(data_dir: &std::path::Path, port: u16) -> Child {
    up_with(
        data_dir,
        port,
        &[("WINBACK_DELIVERY__TRACKING_LISTEN", "127.0.0.1:0")],
    )
    .await
}

/// `winback up` with extra environment.
async fn up_with(data_dir: &std::path::Path, port: u16, env: &[(&str, &str)]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(["up", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("WINBACK_TELEMETRY__LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("winback is serving") {
                return line;
            }
        }
        panic!("winback up exited before serving");
    })
    .await
    .expect("winback up serves within 60 s");
    assert!(serving.starts_with('{'), "json log line: {serving}");
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn winback_up_serves_all_five_services_with_health_and_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = up(dir.path(), port).await;
    let channel = channel(port).await;

    let mut health = HealthClient::new(channel.clone());
    for name in FIVE.iter().chain([&service_names::EVENTS]) {
        let reply = health
            .check(HealthCheckRequest {
                service: (*name).into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status, ServingStatus::Serving as i32, "{name}");
    }

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let listed: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in FIVE {
        assert!(
            listed.iter().any(|l| l == name),
            "{name} missing from {listed:?}"
        );
    }

    // The container health check: `winback health` exits 0 for a serving service.
    let probe = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args([
            "health",
            "--addr",
            &format!("http://127.0.0.1:{port}"),
            "--service",
            service_names::OFFERS,
        ])
        .output()
        .await
        .unwrap();
    assert!(probe.status.success());
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "SERVING");
    let probe = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args([
            "health",
            "--addr",
            &format!("http://127.0.0.1:{port}"),
            "--service",
            "no.such.Service",
        ])
        .output()
        .await
        .unwrap();
    assert!(!probe.status.success(), "an unknown service is not healthy");

    // Keys were generated on first start and kept in the data folder.
    assert!(dir.path().join("keys/token.pub.pem").exists());
    assert!(dir.path().join("profiles.db").exists());

    stop(&mut child).await;
}

#[tokio::test]
async fn tenant_create_prints_a_token_the_running_stack_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = up(dir.path(), port).await;

    let output = create_tenant(dir.path(), "Beauty salon on Tverskaya").await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(created["tenant_id"].as_str().unwrap().starts_with("t_"));

    // The same name again is refused, and nothing is printed on stdout.
    let again = create_tenant(dir.path(), "Beauty salon on Tverskaya").await;
    assert!(!again.status.success());
    assert!(again.stdout.is_empty());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    use winback_platform::grpc::CallCredentials;
    use winback_proto::offers::offers_service_client::OffersServiceClient;
    let channel = channel(port).await;
    let status = OffersServiceClient::new(channel.clone())
        .list_ladders(winback_proto::offers::ListLaddersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let ladders =
        OffersServiceClient::with_interceptor(channel, CallCredentials::bearer(&token).unwrap())
            .list_ladders(winback_proto::offers::ListLaddersRequest::default())
            .await
            .unwrap()
            .into_inner();
    // Authenticated as the new tenant, which has no ladders yet.
    assert!(ladders.ladders.is_empty());

    // A read-only key reads and cannot write; revoked, it is refused within seconds.
    let tenant = created["tenant_id"].as_str().unwrap().to_owned();
    let cli = |args: Vec<String>| {
        let dir = dir.path().to_path_buf();
        async move {
            let output = Command::new(env!("CARGO_BIN_EXE_winback"))
                .args(&args)
                .arg("--data-dir")
                .arg(dir)
                .output()
                .await
                .unwrap();
            assert!(
                output.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).unwrap()
        }
    };
    let args = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let key: serde_json::Value = serde_json::from_str(
        &cli(args(&[
            "tenant",
            "key",
            "create",
            "--tenant",
            &tenant,
            "--name",
            "analyst",
            "--scope",
            "read-only",
        ]))
        .await,
    )
    .unwrap();
    let analyst = OffersServiceClient::with_interceptor(
        self::channel(port).await,
        CallCredentials::bearer(key["token"].as_str().unwrap()).unwrap(),
    );
    analyst
        .clone()
        .list_ladders(winback_proto::offers::ListLaddersRequest::default())
        .await
        .unwrap();
    let denied = analyst
        .clone()
        .create_ladder(winback_proto::offers::CreateLadderRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let listed = cli(args(&["tenant", "key", "list", "--tenant", &tenant])).await;
    assert_eq!(listed.lines().count(), 2, "initial and analyst: {listed}");
    assert!(!listed.contains(key["token"].as_str().unwrap()));
    let key_id = key["key_id"].as_str().unwrap();
    cli(args(&[
        "tenant", "key", "revoke", "--tenant", &tenant, key_id,
    ]))
    .await;
    let revoked_at = std::time::Instant::now();
    loop {
        let reply = analyst
            .clone()
            .list_ladders(winback_proto::offers::ListLaddersRequest::default())
            .await;
        if let Err(status) = reply {
            assert_eq!(status.code(), Code::Unauthenticated);
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quota: serde_json::Value = serde_json::from_str(
        &cli(args(&[
            "tenant",
            "quota",
            "--tenant",
            &tenant,
            "--messages-per-day",
            "500",
        ]))
        .await,
    )
    .unwrap();
    assert_eq!(quota["messages_per_day"], 500);
    assert_eq!(quota["calls_per_second"], 1000, "the default is kept");

    stop(&mut child).await;
}

/// Runs `winback tenant create NAME` on a data folder.
async fn create_tenant(data_dir: &std::path::Path, name: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(["tenant", "create", name, "--data-dir"])
        .arg(data_dir)
        .output()
        .await
        .unwrap()
}

/// Sends SIGTERM and expects a clean exit.
async fn stop(child: &mut Child) {
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("winback up exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_bad_configuration_value_stops_winback_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .env("WINBACK_SERVER__REQUEST_TIMEOUT_MS", "soon")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.request_timeout_ms"), "{stderr}");
    // Nothing was started or written.
    assert!(!dir.path().join("profiles.db").exists());
}

#[tokio::test]
async fn two_stacks_on_their_own_ports_each_put_tracking_on_the_next_port() {
    // Two ports with a free neighbour each.
    let mut ports = Vec::new();
    while ports.len() < 2 {
        let p = free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            ports.push(p);
        }
    }
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut a = up_with(dirs[0].path(), ports[0], &[]).await;
    let mut b = up_with(dirs[1].path(), ports[1], &[]).await;
    for port in &ports {
        let tracking = tokio::net::TcpStream::connect(("127.0.0.1", port + 1)).await;
        assert!(tracking.is_ok(), "tracking server beside {port}");
    }
    stop(&mut a).await;
    stop(&mut b).await;
}
