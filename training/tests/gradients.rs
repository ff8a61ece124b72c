//! The losses, the distillation target and one whole step's gradients against PyTorch.

use burn::tensor::{Device, Tensor, TensorData};
use efficientad_training::train::distill::patch_target;
use efficientad_training::train::{StepInputs, losses};

use crate::util::*;

#[test]
fn training_losses_equal_the_pytorch_reference() {
    let device = Device::flex();
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("losses.json")).expect("fixture"))
            .expect("json");
    let f = |k: &str| fixture[k].as_f64().unwrap_or_else(|| panic!("{k}"));
    let model = formula_model(&device);
    let formula = FormulaInputs::new(&model, &device);
    let image = &formula.image;
    let t_image = &formula.teacher_image;
    let (_, l, selection) = losses(&model, &formula.inputs(), None, &device);
    // float32 networks in two frameworks: 1e-4 relative (the tolerance for losses).
    for (name, got, want) in [
        ("hard", l.hard, f("hard")),
        ("penalty", l.penalty, f("penalty")),
        ("ae", l.ae, f("ae")),
        ("stae", l.stae, f("stae")),
        ("total", l.total, f("total")),
    ] {
        assert!(close(got, want, 1e-4), "{name}: {got} vs torch {want}");
    }
    assert!(
        close(f64::from(selection.threshold), f("hard_quantile"), 1e-5),
        "{selection:?}"
    );
    assert_eq!(
        selection.selected as f64,
        f("hard_selected"),
        "hard loss selection"
    );

    // Independently: exactly the elements at or above the quantile are averaged.
    let c = model.teacher.out_channels();
    let s = to_vec(
        model
            .student
            .forward(efficientad_training::model::imagenet_normalize(
                Tensor::from_data(TensorData::new(image.clone(), [1, 3, 256, 256]), &device),
            )),
    );
    let d: Vec<f32> = t_image
        .iter()
        .zip(&s[..c * 56 * 56])
        .map(|(t, s)| (t - s) * (t - s))
        .collect();
    let chosen: Vec<f32> = d
        .iter()
        .copied()
        .filter(|&v| v >= selection.threshold)
        .collect();
    assert_eq!(chosen.len(), selection.selected);
    let mean = chosen.iter().map(|&v| f64::from(v)).sum::<f64>() / chosen.len() as f64;
    assert!(close(l.hard, mean, 1e-5), "{} vs {mean}", l.hard);
}

#[test]
fn distillation_target_and_loss_equal_the_pytorch_reference() {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("losses.json")).expect("fixture"))
            .expect("json");
    let feat = |c: usize, h: usize, w: usize, a: f64| -> Vec<f32> {
        (0..c * h * w)
            .map(|i| (a * i as f64).sin() as f32)
            .collect()
    };
    let target = patch_target(
        &feat(8, 16, 16, 0.37),
        (8, 16, 16),
        &feat(12, 8, 8, 0.23),
        (12, 8, 8),
        16,
        24,
    );
    let want: Vec<f32> = fixture["target"]
        .as_array()
        .expect("target")
        .iter()
        .map(|v| v.as_f64().expect("f") as f32)
        .collect();
    let err = rel_diff(&target, &want);
    assert!(
        err < 1e-5,
        "distillation target differs from PatchCore-style torch reference: {err}"
    );

    // MSE of the padded teacher against the per-channel normalized target.
    let device = Device::flex();
    let mut teacher = formula_model(&device).teacher;
    teacher.set_padding(true);
    let plane = 16 * 16;
    let mut normalized = target.clone();
    for c in 0..24 {
        let ch = &mut normalized[c * plane..(c + 1) * plane];
        let m = ch.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64;
        let s = (ch.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / plane as f64).sqrt();
        ch.iter_mut()
            .for_each(|v| *v = ((f64::from(*v) - m) / s) as f32);
    }
    let x = efficientad_training::model::imagenet_normalize(Tensor::from_data(
        TensorData::new(formula_image("image", 64), [1, 3, 64, 64]),
        &device,
    ));
    let out = teacher.forward(x);
    let t = Tensor::<4>::from_data(TensorData::new(normalized, [1, 24, 16, 16]), &device);
    let mse = to_vec(efficientad_training::train::loss::mse(out, t))[0];
    let want = fixture["distill_mse"].as_f64().expect("mse");
    assert!(
        close(f64::from(mse), want, 1e-4),
        "distillation loss {mse} vs torch {want}"
    );
}

#[test]
fn a_few_optimizer_steps_lower_the_loss() {
    use burn::optim::{AdamConfig, GradientsParams};
    let device = Device::flex().autodiff();
    let plain = Device::flex();
    let mut model = formula_model(&device);
    let image = formula_image("image", 256);
    let penalty = formula_image("penalty", 256);
    let teacher_plain = formula_model(&plain);
    let t_image = normalized_teacher(&teacher_plain, &image, &plain);
    let inputs = StepInputs {
        image: &image,
        teacher_image: &t_image,
        penalty: &penalty,
        augmented: &image,
        teacher_augmented: &t_image,
    };
    let mut opt_s = AdamConfig::new().init();
    let mut opt_a = AdamConfig::new().init();
    let mut history = Vec::new();
    for _ in 0..6 {
        let (total, l, _) = losses(&model, &inputs, None, &device);
        history.push(l.total);
        let mut grads = total.backward();
        let gs = GradientsParams::from_module(&mut grads, &model.student);
        let ga = GradientsParams::from_module(&mut grads, &model.autoencoder);
        model.student = opt_s.step(1e-3, model.student, gs);
        model.autoencoder = opt_a.step(1e-3, model.autoencoder, ga);
    }
    assert!(
        history[5] < 0.8 * history[0],
        "loss did not fall: {history:?}"
    );
}

/// One whole `fit` step's gradients — every weight and bias of the student and the autoencoder —
/// against PyTorch's autograd on the same formula networks and inputs (fixture made by
/// make_grad_fixture.py). This covers the batched student pass, the per-half output
/// convolution and the im2col + GEMM convolution gradients together. Tolerance: per tensor,
/// ‖Burn − torch‖₂ ≤ 1e-4 · ‖torch‖₂ (float32 in two frameworks with different summation
/// orders; measured at most 4.1e-5, in the bias of the autoencoder's first decoder conv, the
/// end of the longest chain).
#[test]
fn step_gradients_equal_pytorch_autograd() {
    check_step_gradients(&Device::flex(), 1e-4);
}
