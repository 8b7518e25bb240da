//! Generates the tonic/prost code of every Winback contract with a vendored `protoc`,
//! so a fresh machine needs nothing installed, and writes the encoded file descriptor set
//! that server reflection serves.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "winback/common/v1/common.proto",
    "winback/events/v1/events.proto",
    "winback/profiles/v1/profiles.proto",
    "winback/segmentation/v1/segmentation.proto",
    "winback/campaigns/v1/campaigns.proto",
    "winback/offers/v1/offers.proto",
    "winback/delivery/v1/delivery.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let includes = vec![root.clone(), protoc_bin_vendored::include_path()?];

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("winback_descriptor.bin"))
        // RPCs whose issue has not landed answer UNIMPLEMENTED through the default stubs.
        .generate_default_stubs(true)
        .compile_with_config(config, &files, &includes)?;
    Ok(())
}
