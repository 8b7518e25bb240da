//! The gRPC bootstrap as a client sees it: open health and reflection, authentication and
//! scopes on everything else, field-level error details, and a shutdown that drains.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use winback_platform::auth::tenant_for;
use winback_platform::config::ServerConfig;
use winback_platform::error::{ServiceError, field_violations};
use winback_platform::grpc::{CallCredentials, GrpcServer};
use winback_platform::testing::test_keys;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::profiles_service_server::{ProfilesService, ProfilesServiceServer};
use winback_proto::profiles::{Customer, GetCustomerRequest, GetCustomerResponse};

/// A profiles handler for these tests: answers slowly, echoes the tenant, rejects empty ids.
#[derive(Debug, Default)]
struct SlowProfiles;

#[tonic::async_trait]
impl ProfilesService for SlowProfiles {
    async fn get_customer(
        &self,
        request: Request<GetCustomerRequest>,
    ) -> Result<Response<GetCustomerResponse>, Status> {
        let tenant = tenant_for(&request, "profiles:read")?;
        let id = request.into_inner().customer_id;
        if id.is_empty() {
            return Err(ServiceError::invalid("customer_id", "must not be empty").into());
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        Ok(Response::new(GetCustomerResponse {
            customer: Some(Customer {
                customer_id: id,
                name: tenant,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

struct Running {
    channel: Channel,
    signer: winback_platform::auth::TokenSigner,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Running {
    start_with(ServerConfig::default()).await
}

async fn start_with(config: ServerConfig) -> Running {
    let (signer, verifier) = test_keys();
    let mut server = GrpcServer::new(&config, verifier);
    server
        .add_service(ProfilesServiceServer::new(SlowProfiles))
        .await;
    server
        .health()
        .set_service_status(
            winback_proto::service_names::PROFILES,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async move { token.cancelled().await })
            .await
            .unwrap();
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Running {
        channel,
        signer,
        shutdown,
        task,
    }
}

fn client(
    channel: &Channel,
    token: Option<&str>,
) -> ProfilesServiceClient<tonic::service::interceptor::InterceptedService<Channel, CallCredentials>>
{
    let credentials = match token {
        Some(token) => CallCredentials::bearer(token).unwrap(),
        None => CallCredentials::default(),
    };
    ProfilesServiceClient::with_interceptor(channel.clone(), credentials)
}

fn get(id: &str) -> GetCustomerRequest {
    GetCustomerRequest {
        customer_id: id.into(),
    }
}

#[tokio::test]
async fn health_needs_no_token_and_reports_the_service() {
    let running = start().await;
    let mut health = HealthClient::new(running.channel.clone());
    let reply = health
        .check(HealthCheckRequest {
            service: winback_proto::service_names::PROFILES.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    running.shutdown.cancel();
}

#[tokio::test]
async fn a_call_without_or_with_a_bad_token_is_unauthenticated() {
    let running = start().await;
    let status = client(&running.channel, None)
        .get_customer(get("c1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client(&running.channel, Some("not-a-jwt"))
        .get_customer(get("c1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let (foreign, _) = test_keys();
    let forged = foreign.tenant_token("t-a", &["*"], 60).unwrap();
    let status = client(&running.channel, Some(&forged))
        .get_customer(get("c1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    running.shutdown.cancel();
}

#[tokio::test]
async fn a_token_without_the_scope_is_permission_denied() {
    let running = start().await;
    let token = running
        .signer
        .tenant_token("t-a", &["offers:read"], 60)
        .unwrap();
    let status = client(&running.channel, Some(&token))
        .get_customer(get("c1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("profiles:read"));
    running.shutdown.cancel();
}

#[tokio::test]
async fn the_tenant_of_the_token_reaches_the_handler() {
    let running = start().await;
    let token = running
        .signer
        .tenant_token("t-a", &["profiles:read"], 60)
        .unwrap();
    let reply = client(&running.channel, Some(&token))
        .get_customer(get("c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.customer.unwrap().name, "t-a");
    // A service token acts for the tenant it names.
    let service = running.signer.service_token("campaigns", 60).unwrap();
    let credentials = CallCredentials::bearer(&service)
        .unwrap()
        .for_tenant("t-b")
        .unwrap();
    let reply = ProfilesServiceClient::with_interceptor(running.channel.clone(), credentials)
        .get_customer(get("c1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.customer.unwrap().name, "t-b");
    running.shutdown.cancel();
}

#[tokio::test]
async fn invalid_input_comes_back_with_the_field_named() {
    let running = start().await;
    let token = running.signer.tenant_token("t-a", &["*"], 60).unwrap();
    let status = client(&running.channel, Some(&token))
        .get_customer(get(""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violations = field_violations(&status);
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "customer_id");
    running.shutdown.cancel();
}

#[tokio::test]
async fn an_rpc_not_built_yet_is_unimplemented() {
    let running = start().await;
    let token = running.signer.tenant_token("t-a", &["*"], 60).unwrap();
    let status = client(&running.channel, Some(&token))
        .get_facts(winback_proto::profiles::GetFactsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    running.shutdown.cancel();
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_call() {
    let running = start().await;
    let token = running.signer.tenant_token("t-a", &["*"], 60).unwrap();
    let mut in_flight = client(&running.channel, Some(&token));
    let call = tokio::spawn(async move { in_flight.get_customer(get("c-slow")).await });
    // Let the call reach the handler, then ask the server to stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.shutdown.cancel();
    let reply = call
        .await
        .unwrap()
        .expect("the in-flight call completes during the drain");
    assert_eq!(reply.into_inner().customer.unwrap().customer_id, "c-slow");
    tokio::time::timeout(Duration::from_secs(5), running.task)
        .await
        .expect("server stops after the drain")
        .unwrap();
}

#[tokio::test]
async fn a_call_past_the_request_timeout_is_cut() {
    let running = start_with(ServerConfig {
        request_timeout_ms: 100,
        ..ServerConfig::default()
    })
    .await;
    let token = running.signer.tenant_token("t-a", &["*"], 60).unwrap();
    let started = std::time::Instant::now();
    let status = client(&running.channel, Some(&token))
        .get_customer(get("c-slow"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "cut at the deadline, not after the handler"
    );
    running.shutdown.cancel();
}

#[tokio::test]
async fn at_shutdown_the_whole_server_is_not_serving_and_a_watch_does_not_hold_the_drain() {
    let running = start_with(ServerConfig {
        shutdown_grace_ms: 10_000,
        ..ServerConfig::default()
    })
    .await;
    let mut health = HealthClient::new(running.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let began = std::time::Instant::now();
    running.shutdown.cancel();
    let mut last = first.status;
    while let Ok(Some(update)) = watch.message().await {
        last = update.status;
    }
    assert_eq!(
        last,
        ServingStatus::NotServing as i32,
        "\"\" turns NOT_SERVING"
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), running.task)
        .await
        .expect("the open watch does not hold the 10 s grace")
        .unwrap();
    assert!(began.elapsed() < std::time::Duration::from_secs(5));
}
