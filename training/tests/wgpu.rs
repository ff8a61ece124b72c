//! The GPU backend (wgpu) on Mesa's software Vulkan driver, against the CPU backend and PyTorch.
//! Built only with `--features wgpu`; `.ci/wgpu` installs Mesa's lavapipe and runs these.

use std::process::Command;

use burn::tensor::Device;
use efficientad::model::bundle::Bundle;
use efficientad_training::export::export_bundle;
use efficientad_training::train::{self, checkpoint};

use crate::util::*;

fn wgpu_device() -> Device {
    efficientad_training::backend::Backend::Wgpu
        .device(true)
        .unwrap_or_else(|e| panic!("{e} (.ci/run installs mesa-vulkan-drivers for lavapipe)"))
}

/// The whole backward pass on the GPU path: every student and autoencoder gradient of one
/// `fit` step against PyTorch autograd's, as the CPU backend is checked (1e-4 there; 1e-3
/// here for the shaders' other summation orders).
#[test]
fn wgpu_step_gradients_equal_pytorch_autograd() {
    check_step_gradients(&wgpu_device(), 1e-3);
}

#[test]
fn wgpu_doctor_names_the_adapter_and_a_software_one_needs_consent() {
    let doctor = Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
        .arg("doctor")
        .output_within()
        .expect("doctor");
    let out = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "{out}");
    assert!(
        out.contains("wgpu adapter: llvmpipe") && out.contains("Cpu, Vulkan"),
        "{out}"
    );
    // Without --allow-cpu-adapter a fit on it is refused, saying how to allow it.
    let (teacher, dataset, penalty) = tiny_setup("wgpu-refuse", true);
    let base = teacher.parent().expect("dir").to_owned();
    let refused = fit_command(
        &["--steps", "1", "--device", "wgpu"],
        (&teacher, &dataset, &penalty),
        &base,
        "w",
    )
    .output_within()
    .expect("fit");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("--allow-cpu-adapter") && stderr.contains("llvmpipe"),
        "{stderr}"
    );
}

/// A build with the GPU backend resuming a CPU run must not open the GPU: Burn loads optimizer
/// state onto its default device, which such a build makes the GPU unless `main` pins it to the
/// CPU. The Vulkan loader's own log (`VK_LOADER_DEBUG=info`) shows whether an instance was made;
/// `doctor`, which lists the adapters, is the control that the log does show one.
#[test]
fn wgpu_build_resumes_a_cpu_run_without_opening_vulkan() {
    const LOADER: &str = "Vulkan Loader Version";
    let doctor = Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
        .arg("doctor")
        .env("VK_LOADER_DEBUG", "info")
        .output_within()
        .expect("doctor");
    let log = String::from_utf8_lossy(&doctor.stderr);
    assert!(
        log.contains(LOADER),
        "the loader logged nothing for doctor: {log}"
    );

    let (teacher, dataset, penalty) = tiny_setup("wgpu-resume-cpu", true);
    let base = teacher.parent().expect("dir").to_owned();
    for steps in [&["--steps", "1"][..], &["--steps", "2", "--resume"]] {
        let output = fit_command(
            &[steps, &["--skip-calibration"]].concat(),
            (&teacher, &dataset, &penalty),
            &base,
            "r",
        )
        .env("VK_LOADER_DEBUG", "info")
        .env_remove("BURN_DEVICE")
        .output_within()
        .expect("fit");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{steps:?}: {stderr}");
        assert!(
            !stderr.contains(LOADER),
            "fit {steps:?} on the CPU opened Vulkan: {stderr}"
        );
    }
    let log = train::read_log(&base.join("runs/r/log.jsonl"));
    assert_eq!(log.len(), 2, "one step, then one resumed step");
}

#[test]
fn wgpu_fit_steps_equal_the_cpu_backend_and_export_to_onnx_runtime() {
    use efficientad_training::backend::Backend;
    use efficientad_training::train::{read_log, stop_flag, train};
    let (teacher, dataset, penalty) = tiny_setup("wgpu-fit", true);
    let base = teacher.parent().expect("dir").to_owned();
    let mut runs = Vec::new();
    for (backend, name) in [(Backend::Cpu, "cpu"), (Backend::Wgpu, "wgpu")] {
        let mut config = fit_config(&teacher, &dataset, &penalty, &base.join(name), 3);
        config.backend = backend;
        config.allow_cpu_adapter = true;
        config.checkpoint_every = 0;
        let trained = train(&config, false, stop_flag(), &mut |_| {}).expect("train");
        runs.push((trained, read_log(&base.join(name).join("log.jsonl"))));
    }
    let (cpu_log, wgpu_log) = (&runs[0].1, &runs[1].1);
    assert_eq!(cpu_log.len(), 3);
    assert_eq!(wgpu_log.len(), 3);
    for (c, g) in cpu_log.iter().zip(wgpu_log) {
        for key in ["hard", "penalty", "ae", "stae", "total"] {
            let (a, b) = (
                c[key].as_f64().expect("cpu loss"),
                g[key].as_f64().expect("wgpu loss"),
            );
            assert!(
                close(a, b, 1e-3),
                "step {}: {key} {a} on the CPU, {b} on wgpu",
                c["step"]
            );
        }
    }
    // The wgpu-trained model exported: ONNX Runtime reproduces its maps, and they equal the
    // CPU-trained model's within the same tolerance.
    let wgpu = wgpu_device();
    let (trained, _) = &runs[1];
    let dir = base.join("wgpu-bundle");
    export_bundle(&trained.model, &trained.info, &dir).expect("export");
    let bundle = Bundle::open(&dir).expect("bundle");
    let batch = batch_u8(&mtd_images(1), 256);
    let ort = cpu_engine(&bundle).run(&batch, 1).expect("ORT");
    let maps = trained.model.maps(batch_tensor(&batch, 1, 256, &wgpu));
    let (st, ae) = (to_vec(maps.st), to_vec(maps.ae));
    let (e_st, e_ae) = (rel_diff(&ort.st, &st), rel_diff(&ort.ae, &ae));
    assert!(e_st < 1e-3 && e_ae < 1e-3, "map_st {e_st}, map_ae {e_ae}");
    let cpu_maps = runs[0]
        .0
        .model
        .maps(batch_tensor(&batch, 1, 256, &Device::flex()));
    let e = rel_diff(&to_vec(cpu_maps.st), &st);
    assert!(e < 1e-3, "CPU- and wgpu-trained map_st differ by {e}");
}

#[test]
fn wgpu_distillation_step_equals_the_cpu_backend() {
    let dir = temp_dir("wgpu-distill");
    let images = dir.join("images");
    copy_first(&penalty_images(), &images, 3);
    let mut teachers = Vec::new();
    // The start (0 steps, on the CPU), then one step on each device.
    for (device, steps) in [("cpu", "0"), ("cpu", "1"), ("wgpu", "1")] {
        let out = dir.join(format!("{device}-{steps}.bpk"));
        let output = distill_command(&images, &out)
            .args([
                "--steps",
                steps,
                "--batch",
                "2",
                "--seed",
                "4",
                "--stats-images",
                "2",
            ])
            .args(["--allow-cpu-adapter", "--device", device])
            // A narrowed teacher: the full PDN-S takes many minutes per step on lavapipe.
            .args(["--width-divisor", "16"])
            .output_within()
            .expect("distill-teacher");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{device}: {stderr}");
        if device == "wgpu" {
            assert!(stderr.contains("wgpu adapter: llvmpipe"), "{stderr}");
        }
        teachers.push(out);
    }
    // The two distilled teachers, both run on the CPU: one step apart from the same start, so
    // any difference is the step's.
    let cpu = Device::flex();
    let batch = batch_u8(&mtd_images(1), 256);
    let outputs: Vec<Vec<f32>> = teachers
        .iter()
        .map(|t| {
            let (pdn, _) = checkpoint::load_teacher(t, None, &cpu).expect("teacher");
            to_vec(pdn.forward(batch_tensor(&batch, 1, 256, &cpu)))
        })
        .collect();
    let e = rel_diff(&outputs[1], &outputs[2]);
    let moved = rel_diff(&outputs[0], &outputs[1]);
    eprintln!("one step moved the teacher's outputs by {moved}; the devices differ by {e}");
    assert!(
        e < 1e-3,
        "teachers after one step differ by {e} (the step moved them by {moved})"
    );
    // The step itself moved the teacher far more than the two devices differ.
    assert!(
        moved > 20.0 * e,
        "the step moved the outputs by {moved}, the devices differ by {e}"
    );
}
