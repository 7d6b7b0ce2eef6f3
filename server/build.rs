//! Generates the server's own stubs from the proto. They are the shared
//! `seaport::pb` messages but for `Service`, which the server encodes
//! straight from its registry records (see `src/wire.rs`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/seaport/v1/seaport.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".seaport.v1.Service", "crate::wire::Service")
        .extern_path(
            ".seaport.v1.WatchEvent.Kind",
            "::seaport::pb::watch_event::Kind",
        )
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
