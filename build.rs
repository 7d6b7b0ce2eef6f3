//! Compiles the proto with protox (pure Rust, so no `protoc` is needed) and
//! writes the descriptor set that server reflection serves.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/seaport/v1/seaport.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("seaport_descriptor.bin"), fds.encode_to_vec())?;
    // The server generates its own stubs (server/build.rs).
    tonic_prost_build::configure()
        .build_server(false)
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
