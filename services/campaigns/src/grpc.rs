//! Handlers of `winback.campaigns.v1.CampaignsService`.
//!
//! Every RPC answers `UNIMPLEMENTED` (the generated default) until issue #7 lands the
//! campaigns capability; the contract, health, reflection, auth and the event feed are live.

use winback_proto::campaigns::campaigns_service_server::CampaignsService;

/// The handlers.
#[derive(Debug, Default)]
pub(crate) struct CampaignsGrpc;

impl CampaignsService for CampaignsGrpc {}
