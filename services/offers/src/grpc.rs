//! Handlers of `winback.offers.v1.OffersService`.
//!
//! Every RPC answers `UNIMPLEMENTED` (the generated default) until issue #5 lands the
//! offers capability; the contract, health, reflection, auth and the event feed are live.

use winback_proto::offers::offers_service_server::OffersService;

/// The handlers.
#[derive(Debug, Default)]
pub(crate) struct OffersGrpc;

impl OffersService for OffersGrpc {}
