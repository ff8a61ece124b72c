//! What a run starts from: its teacher (a checkpoint or a backbone target) and its images in
//! memory.

use std::path::PathBuf;

use burn::tensor::Device;

use super::{Event, FitConfig, Teacher, TrainError};
use crate::data;
use crate::model::target_teacher::{TargetTeacher, target_path};
use crate::model::{IMAGE_SIZE, Pdn};
use crate::train::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};

/// The run's teacher, the PDN the model is assembled around, and the teacher's description.
///
/// A target teacher (`target:BACKBONE.onnx`) lives outside the Burn module: the model's own
/// teacher field then holds an untrained PDN of the student's size that nothing reads (the
/// export and every step take the teacher from its provenance).
pub(super) fn open_teacher(
    config: &FitConfig,
    plain: &Device,
) -> Result<(Teacher, Pdn, CheckpointInfo), TrainError> {
    let Some(backbone) = target_path(&config.teacher) else {
        let (pdn, info) = checkpoint::load_teacher(&config.teacher, None, plain)?;
        return Ok((Teacher::Pdn(pdn.clone()), pdn, info));
    };
    let target = TargetTeacher::open(&backbone)?;
    let info = CheckpointInfo {
        kind: Kind::Teacher,
        variant: config.variant,
        width_divisor: 1,
        teacher: TeacherProvenance::Target {
            backbone: backbone.display().to_string(),
            backbone_sha256: target.sha256.clone(),
            shape: target.shape.clone(),
        },
        training: serde_json::json!({ "distillation": "none: the backbone target is the teacher" }),
        normalize_exposure: config.normalize_exposure,
    };
    let mut placeholder = info.teacher_config().init(plain);
    placeholder.set_padding(false);
    Ok((Teacher::Target(Box::new(target)), placeholder, info))
}

/// Decoded images, RGB at network resolution, one buffer each.
pub(super) type Images = Vec<Vec<u8>>;

/// The training and penalty images in memory at network resolution (penalty images resized
/// to 512 and centre-cropped); an error when a folder yields none.
pub(super) fn load_train_and_penalty(
    config: &FitConfig,
    train_files: &[PathBuf],
    penalty_files: &[PathBuf],
    events: &mut dyn FnMut(Event<'_>),
) -> Result<(Images, Images), TrainError> {
    let total = train_files.len() + penalty_files.len();
    let mut done = 0;
    let mut loaded = |done: &mut usize| {
        *done += 1;
        events(Event::Loading {
            done: *done,
            total,
            what: "images",
        });
    };
    let train_set = data::load_images(train_files, IMAGE_SIZE, None, || loaded(&mut done));
    let penalty_set = data::load_images(penalty_files, 2 * IMAGE_SIZE, Some(IMAGE_SIZE), || {
        loaded(&mut done)
    });
    for (set, dir) in [
        (&train_set, &config.dataset),
        (&penalty_set, &config.penalty_images),
    ] {
        if set.skipped > 0 {
            events(Event::Message(&format!(
                "{} unreadable images skipped in {}",
                set.skipped,
                dir.display()
            )));
        }
        if set.pixels.is_empty() {
            return Err(data::DataError::Empty {
                path: dir.clone(),
                skipped: set.skipped,
            }
            .into());
        }
    }
    Ok((train_set.pixels, penalty_set.pixels))
}
