//! Which files are images: one listing for every command and for the training crate, so a
//! folder means the same set of parts to `calibrate`, `infer`, `eval`, a `dir:` source and
//! `fit`. (Decoding lives in [`crate::model::preprocess`], beside the resize it feeds.)

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// File extensions picked up when a folder is given.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "tif", "tiff"];

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("cannot list {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
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
/// Symbolic links are followed, but every real folder is entered once and every real image
/// file listed once (by canonical path): a link back up the tree (`ln -s .. up`) ends the walk
/// there with a warning on stderr instead of walking forever.
pub fn list_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ListError> {
    let mut out = Vec::new();
    let mut seen = Seen::default();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut seen, &mut found)?;
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

/// Real folders entered and real files listed so far.
#[derive(Default)]
struct Seen {
    dirs: HashSet<PathBuf>,
    files: HashSet<PathBuf>,
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

fn walk(dir: &Path, seen: &mut Seen, out: &mut Vec<PathBuf>) -> Result<(), ListError> {
    let real = std::fs::canonicalize(dir).map_err(|e| ListError::Read {
        path: dir.to_owned(),
        source: e,
    })?;
    if !seen.dirs.insert(real.clone()) {
        crate::log_line!(
            "efficientad: warning: {} is {} again (a symbolic link loop or a second link to it); its images are listed once",
            dir.display(),
            real.display()
        );
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ListError::Read {
            path: dir.to_owned(),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    // Sorted, so which of two links to one image is kept does not depend on the file system.
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, seen, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            // A second link to an image already listed is the same part: judge it once.
            let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if seen.files.insert(key) {
                out.push(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ln -s . self` and `ln -s .. up` inside a folder with one image: the walk ends, the
    /// image is listed once.
    #[test]
    fn symbolic_link_loops_are_walked_once() {
        let dir = std::env::temp_dir().join(format!("images-loop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let inner = dir.join("parts");
        std::fs::create_dir_all(&inner).expect("mkdir");
        std::fs::write(inner.join("a.png"), b"x").expect("file");
        std::os::unix::fs::symlink(".", inner.join("self")).expect("link");
        std::os::unix::fs::symlink("..", inner.join("up")).expect("link");
        std::os::unix::fs::symlink("a.png", inner.join("b.png")).expect("link");
        let files = list_images(std::slice::from_ref(&inner)).expect("list");
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].ends_with("parts/a.png"), "{files:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
