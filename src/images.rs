//! Which files are images: one listing for every command and for the training crate, so a
//! folder means the same set of parts to `calibrate`, `infer`, `eval`, a `dir:` source and
//! `fit`. (Decoding lives in [`crate::preprocess`], beside the resize it feeds.)

use std::path::{Path, PathBuf};

/// File extensions picked up when a folder is given.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "tif", "tiff"];

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("cannot list {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

/// Why a folder of images cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("{0} does not exist or is not a folder")]
    NotAFolder(PathBuf),
    #[error("{path} holds no images ({})", IMAGE_EXTENSIONS.join(", "))]
    Empty { path: PathBuf },
    #[error(transparent)]
    List(#[from] ListError),
}

/// Expands files and folders into a list of files: a file is taken as given (so a non-image
/// gets its own error line), a folder contributes its image files, recursively, sorted.
pub fn list_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ListError> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut found)?;
            found.sort();
            out.extend(found);
        } else if path.exists() {
            out.push(path.clone());
        } else {
            return Err(ListError::Missing(path.clone()));
        }
    }
    Ok(out)
}

/// The image files of one folder: an error when it is missing, unreadable or holds none.
pub fn image_folder(dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    if !dir.is_dir() {
        return Err(FolderError::NotAFolder(dir.to_owned()));
    }
    let files = list_images(&[dir.to_owned()])?;
    if files.is_empty() {
        return Err(FolderError::Empty {
            path: dir.to_owned(),
        });
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ListError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ListError::Read {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}
