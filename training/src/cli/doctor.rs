//! `efficientad-train doctor`: what this training binary can compute on — the CPU backend
//! always, and with `--features wgpu` the Vulkan adapters it sees, which one a `--device wgpu`
//! run would take, and what to install when there is none.

use efficientad_training::backend::{adapters, choose, no_adapter};

pub fn run() -> anyhow::Result<()> {
    println!("efficientad-train {}", env!("CARGO_PKG_VERSION"));
    println!(
        "cpu: Burn flex backend, {} threads",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if !cfg!(feature = "wgpu") {
        println!(
            "wgpu: not built in (cargo build --release -p efficientad-training --features wgpu)"
        );
        return Ok(());
    }
    let found = adapters();
    if found.is_empty() {
        println!("wgpu: {}", no_adapter());
        return Ok(());
    }
    for a in &found {
        println!("wgpu adapter: {}", a.describe());
    }
    match choose(&found, false) {
        Ok(a) => println!("--device wgpu takes: {}", a.describe()),
        Err(why) => println!("--device wgpu: {why}"),
    }
    Ok(())
}
