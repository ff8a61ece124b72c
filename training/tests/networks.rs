//! The networks' shapes and the checkpoint format.

use burn::module::Module;
use burn::tensor::Device;
use efficientad_training::model::teacher::import_pdn;
use efficientad_training::model::{AutoencoderConfig, PdnConfig, Variant};
use efficientad_training::train::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};

use crate::util::*;

#[test]
fn parameter_counts_match_the_paper() {
    let device = Device::flex();
    let count = |m: &dyn Fn() -> usize| m();
    let s_teacher = PdnConfig::new(Variant::Small, 384)
        .init(&device)
        .num_params();
    let s_student = PdnConfig::new(Variant::Small, 768)
        .init(&device)
        .num_params();
    let m_teacher = PdnConfig::new(Variant::Medium, 384)
        .init(&device)
        .num_params();
    let m_student = PdnConfig::new(Variant::Medium, 768)
        .init(&device)
        .num_params();
    let ae = count(&|| AutoencoderConfig::new(384).init(&device).num_params());
    // docs/method.md: S = 2.69M + 4.27M + 1.10M; M = 8.03M + 11.62M (+ the same AE).
    assert_eq!(s_teacher, 2_694_144);
    assert_eq!(s_student, 4_267_392);
    assert_eq!(m_teacher, 8_026_624);
    assert_eq!(m_student, 11_615_488);
    assert_eq!(ae, 1_096_320);
}

#[test]
fn checkpoints_round_trip() {
    let device = Device::flex();
    let dir = temp_dir("checkpoint");
    let teacher = import_pdn(
        &fixture("pdn_m_named.pth"),
        tiny_teacher_config(Variant::Medium),
        &device,
    )
    .expect("import");
    let info = CheckpointInfo {
        normalize_exposure: false,
        kind: Kind::Teacher,
        variant: Variant::Medium,
        width_divisor: FIXTURE_DIVISOR,
        teacher: TeacherProvenance::Imported {
            file: "pdn_m_named.pth".into(),
            sha256: "x".into(),
        },
        training: serde_json::Value::Null,
    };
    let path = dir.join("teacher.bpk");
    checkpoint::save_teacher(&teacher, &info, &path).expect("save");
    let (loaded, loaded_info) =
        checkpoint::load_teacher(&path, Some(Variant::Medium), &device).expect("load");
    assert_eq!(loaded_info, info);
    let a = to_vec(teacher.forward(fixture_input(&device)));
    let b = to_vec(loaded.forward(fixture_input(&device)));
    assert_eq!(a, b, "a checkpoint must restore the exact weights");

    let err = checkpoint::load_teacher(&path, Some(Variant::Small), &device)
        .expect_err("variant mismatch accepted");
    assert!(err.to_string().contains("--variant s"), "{err}");
    let err = checkpoint::load_model(&path, &device).expect_err("teacher loaded as a whole model");
    assert!(err.to_string().contains("holds a teacher"), "{err}");
}
