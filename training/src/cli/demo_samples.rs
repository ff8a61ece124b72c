//! `efficientad-train demo-samples`: demo parts drawn at random (seeded) from a dataset's test
//! split — GOOD good parts and DEFECTIVE parts from all defect folders together, copied into
//! OUT/<folder>/.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use efficientad_training::data::Rng;

#[derive(Args)]
pub struct DemoSamplesArgs {
    /// Dataset folder in the MVTec layout.
    #[arg(long)]
    pub dataset: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 3)]
    pub good: usize,
    #[arg(long, default_value_t = 3)]
    pub defective: usize,
    /// Folder to fill (emptied first), e.g. onnx/mtd-s/samples.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: DemoSamplesArgs) -> anyhow::Result<()> {
    let DemoSamplesArgs {
        dataset,
        seed,
        good,
        defective,
        out,
    } = args;
    let items = efficientad::offline::dataset::test_set(&dataset)?;
    let mut rng = Rng::new(seed);
    let mut chosen = Vec::new();
    for (anomalous, count) in [(false, good), (true, defective)] {
        let mut pool: Vec<_> = items.iter().filter(|i| i.anomalous == anomalous).collect();
        if pool.len() < count {
            bail!(
                "{} has {} {} test images, fewer than the {count} asked for",
                dataset.display(),
                pool.len(),
                if anomalous { "defective" } else { "good" }
            );
        }
        rng.shuffle(&mut pool);
        chosen.extend(pool.into_iter().take(count));
    }
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("emptying {}", out.display()))?;
    }
    for item in chosen {
        let dir = out.join(&item.defect);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = item.path.file_name().context("image without a file name")?;
        std::fs::copy(&item.path, dir.join(name))
            .with_context(|| format!("copying {}", item.path.display()))?;
        println!("{}", dir.join(name).display());
    }
    Ok(())
}
