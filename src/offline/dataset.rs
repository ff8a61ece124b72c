//! Datasets in the MVTec AD layout (docs/design.md, Data layout): `test/<good|defect>/*`,
//! `ground_truth/<defect>/<stem>_mask.png`. The label comes from the folder: `good` is normal,
//! anything else anomalous.

use std::path::{Path, PathBuf};

use crate::offline::images::list_images;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(
        "{0} has no test/ folder; a dataset in the MVTec layout has test/good and test/<defect> folders"
    )]
    NoTest(PathBuf),
    #[error(transparent)]
    List(#[from] crate::offline::images::ListError),
    #[error("cannot list {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds no test images")]
    Empty(PathBuf),
}

/// One test image and its ground truth.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub path: PathBuf,
    /// Folder name under test/: `good` or the defect type.
    pub defect: String,
    pub anomalous: bool,
    /// `ground_truth/<defect>/<stem>_mask.png`, when it exists.
    pub mask: Option<PathBuf>,
}

/// Lists `test/` of a dataset, folders sorted, files sorted within them.
pub fn test_set(dataset: &Path) -> Result<Vec<TestImage>, DatasetError> {
    let test = dataset.join("test");
    if !test.is_dir() {
        return Err(DatasetError::NoTest(dataset.to_owned()));
    }
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&test)
        .map_err(|e| DatasetError::Read {
            path: test.clone(),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    let mut out = Vec::new();
    for folder in folders {
        let defect = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let anomalous = defect != "good";
        let files = list_images(std::slice::from_ref(&folder))?;
        for path in files {
            let mask = anomalous
                .then(|| {
                    let stem = path.file_stem()?.to_string_lossy().into_owned();
                    let mask = dataset
                        .join("ground_truth")
                        .join(&defect)
                        .join(format!("{stem}_mask.png"));
                    mask.is_file().then_some(mask)
                })
                .flatten();
            out.push(TestImage {
                path,
                defect: defect.clone(),
                anomalous,
                mask,
            });
        }
    }
    if out.is_empty() {
        return Err(DatasetError::Empty(test));
    }
    Ok(out)
}
