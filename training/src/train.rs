//! Student and autoencoder training (docs/method.md, the paper's Algorithm 1), `efficientad-train fit`.
//!
//! Per step, with I a training image, P a penalty image and I′ = aug(I):
//! L = L_hard(T̂(I), S(I)[:C]) + L_pen(S(P)[:C]) + mse(T̂(I′), A(I′)) + mse(A(I′), S(I′)[C:]).
//! The teacher is frozen; its outputs on the unaugmented training images are computed once and
//! cached. Everything random — initialization, image order, penalty choice, augmentation and
//! dropout — comes from one seeded stream (`data::Rng`), restored on `--resume`, so a resumed
//! run is bit-identical to an uninterrupted one.
//!
//! The run is set up (images, teacher outputs, a fresh or resumed model), stepped
//! ([`step`]), checkpointed ([`run_state`]) and finished into a [`Trained`] model.

pub mod checkpoint;
mod config;
pub mod distill;
pub mod loss;
mod run_state;
mod setup;
mod step;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;

pub use config::FitConfig;
pub use run_state::{RunState, Work, read_log, save_checkpoint, stop_flag};
pub(crate) use step::scalar;
pub use step::{
    Optimizers, StepData, StepInputs, StepLosses, Teacher, adam, losses, step, teacher_raw,
};

use setup::{load_train_and_penalty, open_teacher};

use crate::data::{self, Rng};
use crate::model::{EfficientAd, set_teacher_stats};
use checkpoint::{CheckpointInfo, Kind};

/// Learning rate and its drop (docs/method.md).
pub const LEARNING_RATE: f64 = 1e-4;
pub const WEIGHT_DECAY: f32 = 1e-5;
pub const LR_DROP_AT: f64 = 0.95;
pub use crate::data::sample::PENALTY_GRAY_P;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("{0}")]
    Io(String),
    #[error("resume: {0}")]
    Resume(String),
    #[error(transparent)]
    Teacher(#[from] crate::train::distill::DistillError),
}

fn io(e: impl std::fmt::Display) -> TrainError {
    TrainError::Io(e.to_string())
}

/// Events reported to the caller (progress bar, messages).
pub enum Event<'a> {
    Message(&'a str),
    Loading {
        done: usize,
        total: usize,
        what: &'a str,
    },
    Step {
        step: usize,
        steps: usize,
        losses: &'a StepLosses,
        images_per_second: f64,
    },
    /// The model after `step` steps, every `eval_every` steps, for a quality check.
    Quality {
        step: usize,
        model: &'a EfficientAd,
        info: &'a CheckpointInfo,
    },
}

/// The outcome of `fit`'s training part.
pub struct Trained {
    pub model: EfficientAd,
    pub info: CheckpointInfo,
    pub state: RunState,
    pub validation: Vec<PathBuf>,
    pub validation_label: &'static str,
    pub interrupted: bool,
}

/// Trains (or resumes) until `config.steps` or until `stop` is set.
pub fn train(
    config: &FitConfig,
    resume: bool,
    stop: Arc<AtomicBool>,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<Trained, TrainError> {
    let run = Run::setup(config, resume, events)?;
    let (run, interrupted) = run.steps(config, &stop, events)?;
    Ok(run.finish(config, interrupted))
}

/// A run between setup and finish.
struct Run {
    plain: Device,
    device: Device,
    work: Work,
    info: CheckpointInfo,
    /// What the teacher saw (its checkpoint's provenance), copied into model.json.
    teacher_training: serde_json::Value,
    model: EfficientAd,
    optimizers: Optimizers,
    state: RunState,
    data: StepData,
    validation: Vec<PathBuf>,
    validation_label: &'static str,
}

impl Run {
    /// Lists and decodes the images, builds a fresh model around the teacher or loads the
    /// checkpoint, and runs the teacher once over the training images.
    fn setup(
        config: &FitConfig,
        resume: bool,
        events: &mut dyn FnMut(Event<'_>),
    ) -> Result<Self, TrainError> {
        let plain = config
            .backend
            .device(config.allow_cpu_adapter)
            .map_err(TrainError::Io)?;
        let device = plain.clone().autodiff();
        let work = Work {
            dir: config.work.clone(),
        };
        std::fs::create_dir_all(work.checkpoint_dir()).map_err(io)?;

        let (mut train_files, validation, validation_label) = data::split(&config.dataset)?;
        if let Some(limit) = config.train_limit {
            train_files.truncate(limit);
        }
        let mut penalty_files = data::folder_files(&config.penalty_images)?;
        if let Some(limit) = config.penalty_limit {
            penalty_files.truncate(limit);
        }

        // Model: fresh around the teacher, or the checkpoint when resuming.
        let (teacher, teacher_pdn, teacher_info) = open_teacher(config, &plain)?;
        let info = CheckpointInfo {
            kind: Kind::Model,
            variant: teacher_info.variant,
            width_divisor: teacher_info.width_divisor,
            teacher: teacher_info.teacher.clone(),
            training: serde_json::Value::Null,
            normalize_exposure: config.normalize_exposure,
        };
        if teacher_info.normalize_exposure != config.normalize_exposure {
            events(Event::Message(&format!(
                "warning: the teacher {} was distilled {} exposure normalization and this model trains {} it",
                config.teacher.display(),
                if teacher_info.normalize_exposure {
                    "with"
                } else {
                    "without"
                },
                if config.normalize_exposure {
                    "with"
                } else {
                    "without"
                },
            )));
        }
        let (mut model, optimizers, mut state) = if resume {
            let loaded = run_state::load_checkpoint(&work, config, &info, &device)?;
            events(Event::Message(&format!(
                "resuming at step {}",
                loaded.2.step
            )));
            loaded
        } else {
            let teacher_on_device = teacher_pdn.clone().fork(&device);
            let mut model =
                EfficientAd::with_teacher(teacher_on_device, &info.teacher_config(), &device);
            let mut rng = Rng::new(config.seed);
            model.init_weights(&mut rng, false, &device);
            // The image order is drawn once the images are decoded: unreadable ones are skipped.
            let state = RunState {
                step: 0,
                rng,
                order: Vec::new(),
                position: 0,
                config: config.clone(),
                wall_seconds: 0.0,
                last_losses: StepLosses::default(),
            };
            (model, Optimizers::new(), state)
        };
        std::fs::write(
            work.dir.join("config.json"),
            serde_json::to_string_pretty(config).map_err(io)?,
        )
        .map_err(io)?;

        let (train_set, penalty_set) =
            load_train_and_penalty(config, &train_files, &penalty_files, events)?;
        if !resume {
            state.order = (0..train_set.len()).collect();
            state.rng.shuffle(&mut state.order);
        } else if train_set.len() != state.order.len() {
            return Err(TrainError::Resume(
                "the training images changed since the checkpoint".into(),
            ));
        }

        // Teacher outputs of the unaugmented training images: computed once, then μ and σ.
        let data = StepData::new(
            train_set,
            penalty_set,
            teacher,
            config.normalize_exposure,
            &plain,
            &mut |done, total| {
                events(Event::Loading {
                    done,
                    total,
                    what: "teacher outputs",
                })
            },
        )?;
        set_teacher_stats(&mut model, &data.cache.mean, &data.cache.std, &device)
            .map_err(TrainError::Io)?;
        Ok(Self {
            plain,
            device,
            work,
            info,
            teacher_training: teacher_info.training,
            model,
            optimizers,
            state,
            data,
            validation,
            validation_label,
        })
    }

    /// Steps until `config.steps` or `stop`, logging each step, checkpointing and handing the
    /// model out for quality checks on schedule. True when stopped early.
    fn steps(
        mut self,
        config: &FitConfig,
        stop: &AtomicBool,
        events: &mut dyn FnMut(Event<'_>),
    ) -> Result<(Self, bool), TrainError> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.log())
            .map_err(io)?;
        let started = Instant::now();
        let wall_before = self.state.wall_seconds;
        let mut interrupted = false;
        let mut checking = 0.0;
        let state = &mut self.state;
        while state.step < config.steps {
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
                break;
            }
            let t0 = Instant::now();
            // Image order: epochs of a fresh permutation.
            if state.position >= state.order.len() {
                state.rng.shuffle(&mut state.order);
                state.position = 0;
            }
            let index = state.order[state.position];
            state.position += 1;
            let lr = if (state.step as f64) < LR_DROP_AT * config.steps as f64 {
                LEARNING_RATE
            } else {
                LEARNING_RATE * 0.1
            };
            // Burn modules move through an optimizer update: out of `self` and back.
            let (stepped, values) = step(
                self.model,
                &mut self.optimizers,
                &self.data,
                index,
                &mut state.rng,
                lr,
                (&self.plain, &self.device),
            )?;
            self.model = stepped;
            state.step += 1;
            state.last_losses = values;
            let rate = 1.0 / t0.elapsed().as_secs_f64();
            let line = serde_json::json!({"step": state.step, "lr": lr, "hard": values.hard, "penalty": values.penalty,
                "ae": values.ae, "stae": values.stae, "total": values.total, "images_per_second": rate});
            use std::io::Write;
            writeln!(log, "{line}").map_err(io)?;
            events(Event::Step {
                step: state.step,
                steps: config.steps,
                losses: &values,
                images_per_second: rate,
            });
            state.wall_seconds = wall_before + started.elapsed().as_secs_f64() - checking;
            if config.checkpoint_every > 0
                && state.step.is_multiple_of(config.checkpoint_every)
                && state.step < config.steps
            {
                save_checkpoint(&self.work, &self.model, &self.info, &self.optimizers, state)?;
            }
            if config.eval_every > 0 && state.step.is_multiple_of(config.eval_every) {
                // The check's time is not training time: kept out of `wall_seconds`.
                let t0 = Instant::now();
                let snapshot = self.model.valid();
                events(Event::Quality {
                    step: state.step,
                    model: &snapshot,
                    info: &self.info,
                });
                checking += t0.elapsed().as_secs_f64();
            }
        }
        state.wall_seconds = wall_before + started.elapsed().as_secs_f64() - checking;
        save_checkpoint(&self.work, &self.model, &self.info, &self.optimizers, state)?;
        Ok((self, interrupted))
    }

    /// The trained model with what made it recorded for model.json.
    fn finish(self, config: &FitConfig, interrupted: bool) -> Trained {
        let Self {
            mut info,
            model,
            state,
            data,
            validation,
            validation_label,
            teacher_training,
            ..
        } = self;
        info.training = serde_json::json!({
            "dataset": config.dataset.display().to_string(),
            "validation": validation_label,
            "training_images": data.train.len(),
            "penalty_images": data.penalty.len(),
            "steps": state.step,
            "planned_steps": config.steps,
            "seed": config.seed,
            "final_losses": state.last_losses,
            "wall_seconds": state.wall_seconds,
            "backend": format!("burn {:?}", config.backend),
            // What the teacher saw (distillation images, steps, batch, statistics sample).
            "teacher_distillation": teacher_training,
        });
        Trained {
            model: model.valid(),
            info,
            state,
            validation,
            validation_label,
            interrupted,
        }
    }
}
