//! Generates the gRPC client code for every `.proto` in `proto/meridian/v1`.
//!
//! The protos are compiled by `protox`, a protobuf compiler written in Rust,
//! rather than by `protoc`: there is no `protoc` on the build machines, and
//! unlike `protoc-bin-vendored` (which ships and runs a prebuilt `protoc` for a
//! fixed list of platforms) `protox` builds wherever Rust builds and needs
//! nothing beyond `cargo fetch` to work offline. It also carries the
//! well-known types (`google/protobuf/duration.proto`, ...) itself.
//!
//! The output lives in `OUT_DIR` and is never committed or edited.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include = manifest_dir.join("../../proto");
    let package_dir = include.join("meridian/v1");

    // The directory itself, so a proto added later triggers a rebuild too.
    println!("cargo:rerun-if-changed={}", package_dir.display());
    // The google.api.http annotations the contract imports (vendored).
    println!(
        "cargo:rerun-if-changed={}",
        include.join("google/api").display()
    );
    let protos = proto_files(&package_dir)?;
    if protos.is_empty() {
        return Err(format!("no .proto files in {}", package_dir.display()).into());
    }
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", include.join(proto).display());
    }

    let descriptors = protox::compile(&protos, [&include])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}

/// Every `.proto` in `dir`, as paths relative to the include root, sorted so
/// the generated code does not depend on directory order.
fn proto_files(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            let name = path.file_name().ok_or("proto path without a file name")?;
            out.push(Path::new("meridian/v1").join(name));
        }
    }
    out.sort();
    Ok(out)
}
