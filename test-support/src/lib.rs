//! Helpers shared by the integration tests of both crates: the workspace's paths, the
//! datasets, temporary folders, file lists, and waiting for child programs with a time limit
//! ([`process`]). Test code only (a dev-dependency).

use std::path::{Path, PathBuf};

pub mod process;

/// The workspace root.
pub fn root() -> PathBuf {
    // The parent, not `…/test-support/..`: tests compare paths the binaries print as text.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The committed fixtures: a small MTD subset in the MVTec layout (`mtd/`, with masks) and a
/// few ImageNet sample images (`imagenet-sample/`), chosen by `scripts/make-fixtures` as the
/// first files of each folder, so a test taking the first n files sees the same ones as on the
/// full data. Every workspace test reads these; nothing outside the repository is needed.
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// The committed MTD subset (see [`fixtures`]).
pub fn mtd() -> PathBuf {
    fixtures().join("mtd")
}

/// The committed penalty / distillation images (see [`fixtures`]).
pub fn penalty_images() -> PathBuf {
    fixtures().join("imagenet-sample")
}

/// The full datasets, for the dataset stage only (tests marked `#[ignore = "dataset stage…"]`,
/// run by `.ci/run` with `--ignored`): `EFFICIENTAD_SHARED_DATA`, else `../shared/data` beside
/// the workspace, holding `mtd/` and `imagenet-sample/` with `../weights/` beside it. Fails
/// loudly, naming the command that gets them, if they are missing.
pub fn shared_data() -> PathBuf {
    let dir = std::env::var_os("EFFICIENTAD_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"));
    assert!(
        dir.join("mtd").is_dir(),
        "the datasets are missing: expected {} (with mtd/ inside); get them with `python3 scripts/fetch-datasets DIR` and set EFFICIENTAD_SHARED_DATA=DIR/data",
        dir.display()
    );
    dir
}

/// The full EfficientNet-Lite0 feature backbone of the dataset stage (see [`shared_data`]).
pub fn lite0_backbone() -> PathBuf {
    shared_data().join("../weights/efficientnet_lite0_features.onnx")
}

/// A fresh, empty temporary folder for one test (unique per test process).
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("efficientad-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// The entries of `dir`, sorted by name.
pub fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files
}

/// The first `n` files (not folders) of `dir`, sorted by name.
pub fn first_files(dir: &Path, n: usize) -> Vec<PathBuf> {
    sorted_files(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .take(n)
        .collect()
}

/// Copies the first `n` entries of `from` (sorted by name) into `to`, created if needed;
/// returns the sources copied.
pub fn copy_first(from: &Path, to: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    let files: Vec<PathBuf> = sorted_files(from).into_iter().take(n).collect();
    for f in &files {
        let name = f.file_name().expect("file name");
        std::fs::copy(f, to.join(name)).unwrap_or_else(|e| panic!("copying {}: {e}", f.display()));
    }
    files
}
