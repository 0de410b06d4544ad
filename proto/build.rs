// Compiles proto/weft.proto with protox (pure Rust), so building weft needs no `protoc` binary.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/weft.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
