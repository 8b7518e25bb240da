//! Handlers of `winback.delivery.v1.DeliveryService`.
//!
//! Every RPC answers `UNIMPLEMENTED` (the generated default) until issue #6 lands the
//! delivery capability; the contract, health, reflection, auth and the event feed are live.

use winback_proto::delivery::delivery_service_server::DeliveryService;

/// The handlers.
#[derive(Debug, Default)]
pub(crate) struct DeliveryGrpc;

impl DeliveryService for DeliveryGrpc {}
