//! `efficientad-train bench`: the real `fit` step (all four losses, Adam, batch 1, 256²) and
//! the real distillation step (backbone targets included) timed on real images, against
//! PyTorch's same steps in the same invocation when python3 can import torch; a table, or one
//! JSON line with `--json`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use efficientad_training::backend::Backend;
use efficientad_training::model::Variant;
use efficientad_training::tools::bench::{
    BenchConfig, Reference, Timing, bench_distill, bench_fit, run_reference, torch_available,
};

use super::parse_variant;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, value_parser = parse_variant, default_value = "s")]
    pub variant: Variant,
    /// Timed steps of each kind (after one warm-up step); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Print one JSON line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// MVTec-layout dataset whose train/good images feed the fit step.
    #[arg(long, default_value = "../shared/data/mtd")]
    pub dataset: PathBuf,
    /// Natural images: the penalty images of fit and the distillation images.
    #[arg(long, default_value = "../shared/data/imagenet-sample")]
    pub images: PathBuf,
    /// Distillation backbone (ONNX).
    #[arg(
        long,
        default_value = "../shared/weights/efficientnet_lite0_features.onnx"
    )]
    pub backbone: PathBuf,
    /// Images per distillation step.
    #[arg(long, default_value_t = 8)]
    pub distill_batch: usize,
    /// Skip the PyTorch comparison.
    #[arg(long)]
    pub no_torch: bool,
    /// Time the fit step only (for a box without the backbone or ONNX Runtime, which the
    /// distillation step needs for its targets).
    #[arg(long)]
    pub no_distill: bool,
    /// Folder of the PyTorch scripts torch_step.py and torch_distill.py.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/bench"))]
    pub scripts: PathBuf,
    /// Compute device: cpu, or wgpu (a GPU; needs a build with --features wgpu).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub device: Backend,
    /// With --device wgpu: accept a software Vulkan adapter (Mesa's lavapipe), slower than
    /// --device cpu; for tests of the GPU code path on machines without a GPU.
    #[arg(long)]
    pub allow_cpu_adapter: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let BenchArgs {
        variant,
        steps,
        json,
        dataset,
        images,
        backbone,
        distill_batch,
        no_torch,
        no_distill,
        scripts,
        device: backend,
        allow_cpu_adapter,
    } = args;
    if steps == 0 || distill_batch == 0 {
        bail!("--steps and --distill-batch must be at least 1");
    }
    for (path, what) in [(&dataset, "--dataset"), (&images, "--images")] {
        if !path.is_dir() {
            bail!("{what} {} is not a folder", path.display());
        }
    }
    if !no_distill && !backbone.is_file() {
        bail!(
            "--backbone {} is not a file (or time the fit step alone with --no-distill)",
            backbone.display()
        );
    }
    let config = BenchConfig {
        variant,
        steps,
        dataset,
        natural_images: images,
        backbone,
        distill_batch,
        backend,
        allow_cpu_adapter,
        torch: !no_torch,
        scripts,
    };
    report(&config, !no_distill, json)?;
    Ok(())
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn comparison(burn: &Timing, reference: &Reference) -> serde_json::Value {
    match reference {
        Reference::Measured { median_s, .. } => serde_json::json!({
            "burn_s": burn.median_s,
            "torch_s": median_s,
            "ratio": median_s / burn.median_s,
            "burn_steps_s": burn.steps_s,
        }),
        Reference::Unavailable(why) => serde_json::json!({
            "burn_s": burn.median_s,
            "torch_s": null,
            "ratio": null,
            "burn_steps_s": burn.steps_s,
            "torch_unavailable": why,
        }),
    }
}

fn line(name: &str, burn: &Timing, reference: &Reference) -> String {
    match reference {
        Reference::Measured { median_s, .. } => format!(
            "{name:<8} burn {:>7.3} s   torch {:>7.3} s   ratio {:.2} (above 1: Burn is faster)",
            burn.median_s,
            median_s,
            median_s / burn.median_s
        ),
        Reference::Unavailable(_) => format!("{name:<8} burn {:>7.3} s", burn.median_s),
    }
}

/// Runs the benchmark and prints the table (or one JSON line).
fn report(config: &BenchConfig, with_distill: bool, json: bool) -> anyhow::Result<()> {
    let say = |m: &str| eprintln!("efficientad-train bench: {m}");
    let torch = if config.torch {
        torch_available()
    } else {
        Err("--no-torch".to_owned())
    };
    match &torch {
        Ok(version) => say(&format!(
            "PyTorch {version} found: it runs the same steps after Burn"
        )),
        Err(why) => say(&format!(
            "no PyTorch comparison: {why}; Burn's figures alone"
        )),
    }
    let threads = rayon::current_num_threads();
    let variant = config.variant.letter().to_owned();
    let steps = config.steps.to_string();

    let fit = bench_fit(config, &mut |m| say(m))?;
    let fit_peak = peak_rss_mib();
    let fit_torch = match &torch {
        Ok(_) => {
            say("fit: PyTorch reference (torch_step.py)");
            run_reference(
                &config.scripts.join("torch_step.py"),
                &[
                    "--variant".into(),
                    variant.clone(),
                    "--steps".into(),
                    steps.clone(),
                ],
            )
        }
        Err(why) => Reference::Unavailable(why.clone()),
    };

    let distill = if with_distill {
        Some(bench_distill(config, &mut |m| say(m))?)
    } else {
        None
    };
    let distill_torch = match &torch {
        Ok(_) if with_distill => {
            say("distill: PyTorch reference (torch_distill.py)");
            run_reference(
                &config.scripts.join("torch_distill.py"),
                &[
                    "--images".into(),
                    config.natural_images.display().to_string(),
                    "--backbone".into(),
                    config.backbone.display().to_string(),
                    "--variant".into(),
                    variant.clone(),
                    "--batch".into(),
                    config.distill_batch.to_string(),
                    "--steps".into(),
                    steps,
                ],
            )
        }
        Ok(_) => Reference::Unavailable("--no-distill".into()),
        Err(why) => Reference::Unavailable(why.clone()),
    };
    for (name, r) in [("fit", &fit_torch), ("distill", &distill_torch)] {
        if name == "distill" && !with_distill {
            continue;
        }
        if let (Ok(_), Reference::Unavailable(why)) = (&torch, r) {
            say(&format!("{name}: the PyTorch reference did not run: {why}"));
        }
    }

    let mut fit_json = comparison(&fit, &fit_torch);
    fit_json["peak_rss_mib"] = serde_json::json!(fit_peak);
    let torch_version = match (&fit_torch, &distill_torch) {
        (Reference::Measured { version, .. }, _) | (_, Reference::Measured { version, .. }) => {
            serde_json::json!(version)
        }
        _ => serde_json::Value::Null,
    };
    let summary = serde_json::json!({
        "fit": fit_json,
        "distill": distill.as_ref().map(|d| comparison(d, &distill_torch)),
        "threads": threads,
        "variant": variant,
        "distill_batch": config.distill_batch,
        "steps": config.steps,
        "torch": torch_version,
    });
    if json {
        println!("{summary}");
    } else {
        println!(
            "PDN-{variant}, {threads} threads, median of {} steps after a warm-up:",
            config.steps
        );
        println!("{}", line("fit", &fit, &fit_torch));
        match &distill {
            Some(d) => println!(
                "{}   (batch {})",
                line("distill", d, &distill_torch),
                config.distill_batch
            ),
            None => println!("distill  not timed (--no-distill)"),
        }
        if let Some(mib) = fit_peak {
            println!("peak memory during the fit steps: {mib:.0} MiB");
        }
    }
    Ok(())
}
