//! Importing the public PDN teacher from a PyTorch state_dict.

use std::process::Command;

use burn::tensor::Device;
use efficientad_training::model::Variant;
use efficientad_training::model::teacher::{ImportError, import_pdn};

use crate::util::*;

#[test]
fn teacher_import_matches_torch_in_both_key_styles() {
    let device = Device::flex();
    for variant in [Variant::Small, Variant::Medium] {
        let v = variant.letter();
        let expected = read_f32(&fixture(&format!("pdn_{v}_out.f32")));
        let expected_padded = read_f32(&fixture(&format!("pdn_{v}_out_padded.f32")));
        for style in ["sequential", "named"] {
            let path = fixture(&format!("pdn_{v}_{style}.pth"));
            let mut pdn = import_pdn(&path, tiny_teacher_config(variant), &device)
                .unwrap_or_else(|e| panic!("{e}"));
            let out = to_vec(pdn.forward(fixture_input(&device)));
            let err = rel_diff(&out, &expected);
            // Same float32 convolutions, different summation order: 1e-5 relative.
            assert!(err < 1e-5, "PDN-{v} {style}: relative error {err}");
            pdn.set_padding(true);
            let out = to_vec(pdn.forward(fixture_input(&device)));
            let err = rel_diff(&out, &expected_padded);
            assert!(err < 1e-5, "PDN-{v} {style} padded: relative error {err}");
        }
    }
}

#[test]
fn teacher_import_errors_name_key_and_shape() {
    let device = Device::flex();
    // Not a torch file at all.
    let err = import_pdn(
        &fixture("not_torch.pth"),
        tiny_teacher_config(Variant::Small),
        &device,
    )
    .expect_err("text file accepted");
    assert!(matches!(err, ImportError::NotTorchFile { .. }), "{err}");
    assert!(err.to_string().contains("not_torch.pth"), "{err}");

    // The other variant: the shape error names the key, both shapes and the right --variant.
    let err = import_pdn(
        &fixture("pdn_s_sequential.pth"),
        tiny_teacher_config(Variant::Medium),
        &device,
    )
    .expect_err("PDN-S file accepted as PDN-M");
    let text = err.to_string();
    assert!(matches!(err, ImportError::WrongShape { .. }), "{text}");
    assert!(
        text.contains("`0.weight`")
            && text.contains("[16, 3, 4, 4]")
            && text.contains("[8, 3, 4, 4]"),
        "{text}"
    );
    assert!(text.contains("--variant s"), "{text}");
    let err = import_pdn(
        &fixture("pdn_m_named.pth"),
        tiny_teacher_config(Variant::Small),
        &device,
    )
    .expect_err("PDN-M file accepted as PDN-S");
    assert!(err.to_string().contains("--variant m"), "{err}");

    // A file with a layer missing.
    let err = import_pdn(
        &fixture("pdn_s_no_conv4.pth"),
        tiny_teacher_config(Variant::Small),
        &device,
    )
    .expect_err("incomplete file accepted");
    assert!(matches!(err, ImportError::MissingKey { .. }), "{err}");
    assert!(err.to_string().contains("`conv4.weight`"), "{err}");
}

#[test]
fn cli_import_teacher_reports_full_size_shape_mismatch() {
    let out_dir = temp_dir("cli-import");
    let output = Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
        .args(["import-teacher", "--variant", "s", "--pth"])
        .arg(fixture("pdn_s_named.pth"))
        .arg("--out")
        .arg(out_dir.join("teacher.bpk"))
        .output_within()
        .expect("run efficientad-train");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`conv1.weight` has shape [8, 3, 4, 4]")
            && stderr.contains("[128, 3, 4, 4]"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
