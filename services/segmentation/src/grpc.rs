//! Handlers of `winback.segmentation.v1.SegmentationService`.
//!
//! Every RPC answers `UNIMPLEMENTED` (the generated default) until issue #4 lands the
//! segmentation capability; the contract, health, reflection, auth and the event feed are live.

use winback_proto::segmentation::segmentation_service_server::SegmentationService;

/// The handlers.
#[derive(Debug, Default)]
pub(crate) struct SegmentationGrpc;

impl SegmentationService for SegmentationGrpc {}
