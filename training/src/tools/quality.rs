//! Quality checkpoints of a training run (`fit --eval-every N`): the model as it is after a
//! step is exported, calibrated on the validation images and evaluated on the dataset's test
//! split by the runtime itself — the same code as `efficientad calibrate` and `eval` — and the
//! numbers go to the run's log as one line `{"step": N, "eval": {...}}`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use efficientad::judge::calibration::DEFAULT_FALSE_REJECT_RATE;
use efficientad::model::bundle::Bundle;
use efficientad::model::engine::{Engine, EngineOptions, Provider};
use efficientad::offline::batch::calibrate::{ImageSet, calibrate_files};
use efficientad::offline::batch::test_split::run_test_split;
use efficientad::offline::dataset::{TestImage, test_set};
use efficientad::offline::evaluation::report;
use efficientad::offline::metrics::{DEFAULT_BUDGET, DEFAULT_FPR_LIMIT};
use serde::{Deserialize, Serialize};

use crate::export::export_bundle;
use crate::model::EfficientAd;
use crate::train::checkpoint::CheckpointInfo;

/// What a quality checkpoint measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    pub image_auroc: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub au_pro: Option<f64>,
    /// At the threshold calibrated on the validation images (1% false rejects).
    pub accuracy: f64,
    pub missed_defects: usize,
    pub false_rejects: usize,
    pub test_images: usize,
    pub failed_images: usize,
    /// Time the check took (export, calibration, test split).
    pub seconds: f64,
}

/// Everything a check needs besides the model: found once, before training starts, so that a
/// dataset without a test split fails at once and not after an hour of training.
pub struct QualityCheck {
    validation: ImageSet,
    test: Vec<TestImage>,
    /// Where each checked model is exported (overwritten by the next check).
    bundle_dir: PathBuf,
}

impl QualityCheck {
    pub fn new(dataset: &Path, work: &Path) -> anyhow::Result<Self> {
        let (_, validation, label) = crate::data::split(dataset)?;
        let test = test_set(dataset)?;
        Ok(Self {
            validation: ImageSet {
                label: format!("{} ({label})", dataset.display()),
                files: validation,
            },
            test,
            bundle_dir: work.join("eval-bundle"),
        })
    }

    /// Images one check runs (validation, then test), for progress.
    pub fn images(&self) -> usize {
        self.validation.files.len() + self.test.len()
    }

    /// Measures the model after `step` steps; `progress` is called once per image.
    pub fn check(
        &self,
        model: &EfficientAd,
        info: &CheckpointInfo,
        step: usize,
        progress: &mut dyn FnMut(),
    ) -> anyhow::Result<Quality> {
        let t0 = Instant::now();
        let mut info = info.clone();
        info.training = serde_json::json!({ "steps": step, "quality_checkpoint": true });
        export_bundle(model, &info, &self.bundle_dir)?;
        let bundle = Bundle::open(&self.bundle_dir)?;
        let options = EngineOptions {
            provider: Provider::Cpu,
            ..EngineOptions::default()
        };
        let mut engine = Engine::new(&bundle, &options)?;
        let calibration = calibrate_files(
            &mut engine,
            &bundle,
            &self.validation,
            None,
            DEFAULT_FALSE_REJECT_RATE,
            &efficientad::judge::region::Region::whole_image(),
            1,
            &mut |_| progress(),
        )?;
        // Kept beside the bundle: `efficientad eval` can look at the last checked model.
        calibration.save(&self.bundle_dir.join("calibration.json"))?;
        let run = run_test_split(&mut engine, &calibration, &self.test, 1, None, progress)?;
        let rep = report(
            &run.images,
            calibration.threshold,
            |s| calibration.is_anomalous(s),
            DEFAULT_FPR_LIMIT,
            DEFAULT_BUDGET,
        );
        Ok(Quality {
            image_auroc: rep.overall.image_auroc,
            pixel_auroc: rep.overall.pixel_auroc,
            au_pro: rep.overall.au_pro,
            accuracy: rep.at_threshold.accuracy,
            missed_defects: rep.at_threshold.missed_defects,
            false_rejects: rep.at_threshold.false_rejects,
            test_images: run.images.len(),
            failed_images: run.failures.len(),
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// Appends `{"step": step, "eval": quality}` to the run's log.
pub fn log_quality(log: &Path, step: usize, quality: &Quality) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    writeln!(
        file,
        "{}",
        serde_json::json!({ "step": step, "eval": quality })
    )
}

/// The quality lines of a run's log, in step order.
pub fn read_quality(log: &Path) -> std::io::Result<Vec<(usize, Quality)>> {
    let text = std::fs::read_to_string(log)?;
    // A resumed run may have checked a step twice: the later line wins.
    let by_step: std::collections::BTreeMap<usize, Quality> = text
        .lines()
        .filter_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            let step = value.get("step")?.as_u64()? as usize;
            let quality = serde_json::from_value(value.get("eval")?.clone()).ok()?;
            Some((step, quality))
        })
        .collect();
    Ok(by_step.into_iter().collect())
}
