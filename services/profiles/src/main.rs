//! The profiles service as its own process (the stack mode).

fn main() -> Result<(), winback_platform::host::StartError> {
    winback_platform::host::service_main(winback_profiles::SERVICE, winback_profiles::serve)
}
