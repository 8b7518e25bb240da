//! The offers service as its own process (the stack mode).

fn main() -> Result<(), winback_platform::host::StartError> {
    winback_platform::host::service_main(winback_offers::SERVICE, winback_offers::serve)
}
