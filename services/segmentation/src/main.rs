//! The segmentation service as its own process (the stack mode).

fn main() -> Result<(), winback_platform::host::StartError> {
    winback_platform::host::service_main(winback_segmentation::SERVICE, winback_segmentation::serve)
}
