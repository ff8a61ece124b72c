//! Helpers shared by the training crate's integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use efficientad::model::preprocess::{Preprocessor, decode_file};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared/data` beside the project (or `EFFICIENTAD_SHARED_DATA`); fails loudly if missing.
pub fn shared_data() -> PathBuf {
    let dir = std::env::var_os("EFFICIENTAD_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"));
    assert!(
        dir.join("mtd").is_dir(),
        "the shared datasets are missing: expected {} (with mtd/ inside); tests on real images need them",
        dir.display()
    );
    dir
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Reads raw little-endian float32 values.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// max |a − b| / max |b|: the relative error measure the issues state tolerances in.
pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared arrays differ in length");
    let max_abs = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        max_abs > 0.0,
        "reference is all zeros: the comparison would prove nothing"
    );
    max_diff / max_abs
}

/// The first `n` test images of MTD, taken round-robin over its defect folders and `good`, so
/// a batch mixes normal and defective parts of different sizes.
pub fn mtd_images(n: usize) -> Vec<PathBuf> {
    let test = shared_data().join("mtd/test");
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&test)
        .unwrap_or_else(|e| panic!("reading {}: {e}", test.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    let lists: Vec<Vec<PathBuf>> = folders
        .iter()
        .map(|f| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(f)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            files.sort();
            files
        })
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        let list = &lists[i % lists.len()];
        out.push(list[(i / lists.len()) % list.len()].clone());
        i += 1;
    }
    out
}

/// Preprocesses images into one NHWC uint8 batch (the runtime's input).
pub fn batch_u8(paths: &[PathBuf], size: usize) -> Vec<u8> {
    let mut pre = Preprocessor::new(size);
    let mut out = vec![0u8; paths.len() * size * size * 3];
    for (p, chunk) in paths.iter().zip(out.chunks_mut(size * size * 3)) {
        let image = decode_file(p).unwrap_or_else(|e| panic!("{e}"));
        pre.prepare(image, chunk).unwrap_or_else(|e| panic!("{e}"));
    }
    out
}

/// The same batch as Burn sees it: `[N, 3, H, W]` in [0, 1].
pub fn batch_tensor(batch: &[u8], n: usize, size: usize, device: &Device) -> Tensor<4> {
    let plane = size * size;
    let mut nchw = vec![0f32; batch.len()];
    for i in 0..n {
        for p in 0..plane {
            for c in 0..3 {
                nchw[i * 3 * plane + c * plane + p] =
                    f32::from(batch[(i * plane + p) * 3 + c]) / 255.0;
            }
        }
    }
    Tensor::from_data(TensorData::new(nchw, [n, 3, size, size]), device)
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("float tensor")
}

/// A fresh temporary folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "efficientad-train-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The files of `dir`, sorted by name.
pub fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files
}

/// Copies the first `n` files of `from` (sorted by name) into `to`, created if needed; returns
/// the sources copied.
pub fn copy_first(from: &Path, to: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    let files: Vec<PathBuf> = sorted_files(from).into_iter().take(n).collect();
    for f in &files {
        let name = f.file_name().expect("file name");
        std::fs::copy(f, to.join(name)).unwrap_or_else(|e| panic!("copying {}: {e}", f.display()));
    }
    files
}
