//! Handlers of `winback.profiles.v1.ProfilesService`.
//!
//! Every RPC answers `UNIMPLEMENTED` (the generated default) until issue #3 lands the
//! profiles capability; the contract, health, reflection, auth and the event feed are live.

use winback_proto::profiles::profiles_service_server::ProfilesService;

/// The handlers.
#[derive(Debug, Default)]
pub(crate) struct ProfilesGrpc;

impl ProfilesService for ProfilesGrpc {}
