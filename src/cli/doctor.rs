//! `efficientad doctor`: what this machine can run, and why not the rest.

use efficientad::model::engine::{Provider, probe_provider};
use efficientad::model::ortlib;

use super::Outcome;

pub fn run() -> anyhow::Result<Outcome> {
    println!("efficientad {}", env!("CARGO_PKG_VERSION"));
    println!("platform: {}", platform());
    let lib = ortlib::load()?;
    println!(
        "onnx runtime: {} (version {}, found via {})",
        lib.path.display(),
        lib.version,
        lib.source
    );
    println!("execution providers:");
    for provider in [Provider::Tensorrt, Provider::Cuda, Provider::Cpu] {
        match probe_provider(provider) {
            Ok(()) => println!("  {:<9} usable", provider.to_string()),
            Err(reason) => println!(
                "  {:<9} not usable: {}",
                provider.to_string(),
                one_line(&reason)
            ),
        }
    }
    let cameras = efficientad::line::source::list_cameras();
    if cameras.is_empty() {
        println!(
            "cameras: none found (USB: no /dev/video* device; GigE: aravis discovery saw none)"
        );
    } else {
        println!("cameras:");
        for c in cameras {
            println!("  {c}");
        }
    }
    Ok(Outcome::Success)
}

/// OS and architecture this binary is built for, and the Jetson's L4T release when there is one
/// (JetPack 6 is L4T R36), since which onnxruntime-gpu wheel fits depends on it.
fn platform() -> String {
    let mut line = format!("{} {}", std::env::consts::OS, std::env::consts::ARCH);
    if let Ok(release) = std::fs::read_to_string("/etc/nv_tegra_release")
        && let Some(first) = release.lines().next()
    {
        line.push_str(&format!(
            ", NVIDIA Jetson ({})",
            first.trim_start_matches('#').trim()
        ));
    }
    line
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
