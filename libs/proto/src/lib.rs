//! Generated gRPC code of the Winback contracts (`proto/winback/**`) and the encoded
//! file descriptor set that server reflection serves.
#![allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]

/// Encoded `FileDescriptorSet` of every Winback proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/winback_descriptor.bin"));

/// Fully qualified gRPC service names, as reflection and health report them.
pub mod service_names {
    /// `winback.profiles.v1.ProfilesService`.
    pub const PROFILES: &str = "winback.profiles.v1.ProfilesService";
    /// `winback.segmentation.v1.SegmentationService`.
    pub const SEGMENTATION: &str = "winback.segmentation.v1.SegmentationService";
    /// `winback.campaigns.v1.CampaignsService`.
    pub const CAMPAIGNS: &str = "winback.campaigns.v1.CampaignsService";
    /// `winback.offers.v1.OffersService`.
    pub const OFFERS: &str = "winback.offers.v1.OffersService";
    /// `winback.delivery.v1.DeliveryService`.
    pub const DELIVERY: &str = "winback.delivery.v1.DeliveryService";
    /// `winback.events.v1.EventsService`.
    pub const EVENTS: &str = "winback.events.v1.EventsService";
}

pub mod winback {
    pub mod common {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/winback.common.v1.rs"));
        }
    }
    pub mod events {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/winback.events.v1.rs"));
        }
    }
    pub mod profiles {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/winback.profiles.v1.rs"));
        }
    }
    pub mod segmentation {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/winback.segmentation.v1.rs"));
        }
    }
    pub mod campaigns {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/winback.campaigns.v1.rs"));
        }
    }
    pub mod offers {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/winback.offers.v1.rs"));
        }
    }
    pub mod delivery {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/winback.delivery.v1.rs"));
        }
    }
}

pub use winback::{
    campaigns::v1 as campaigns, common::v1 as common, delivery::v1 as delivery,
    events::v1 as events, offers::v1 as offers, profiles::v1 as profiles,
    segmentation::v1 as segmentation,
};
