//! Finding and loading the ONNX Runtime shared library (docs/design.md, Runtime).
//!
//! `ort` is built with `load-dynamic`: the binary carries no ONNX Runtime, so the same binary
//! runs on CPU boxes, CUDA/TensorRT boxes and Jetsons with the library each provides. The
//! search order is fixed and every step says why it was skipped:
//! 1. `ORT_DYLIB_PATH` (must point at a loadable library — an error, not a fallback, if not);
//! 2. the `onnxruntime` / `onnxruntime-gpu` package of the active `python3`;
//! 3. the pinned copy in the user cache;
//! 4. installing the pinned CPU wheel into that cache with pip, said on stderr
//!    (disabled by `EFFICIENTAD_NO_ORT_INSTALL=1`).
//!
//! ort allows one environment per process, so the loaded library and its environment live in a
//! process-wide `OnceLock`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The onnxruntime release this runtime is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
/// The shared library's file name inside the wheel (only the versioned name exists).
pub const LIB_NAME: &str = "libonnxruntime.so.1.31.1";

pub const ENV_DYLIB: &str = "ORT_DYLIB_PATH";
pub const ENV_NO_INSTALL: &str = "EFFICIENTAD_NO_ORT_INSTALL";
/// Python interpreter consulted for an installed onnxruntime package (default `python3`).
pub const ENV_PYTHON: &str = "EFFICIENTAD_PYTHON";
/// Overrides the cache folder (default `$XDG_CACHE_HOME/efficientad` or `~/.cache/efficientad`).
pub const ENV_CACHE: &str = "EFFICIENTAD_CACHE";

#[derive(Clone, Debug, thiserror::Error)]
pub enum OrtLibError {
    #[error(
        "{ENV_DYLIB} points to {path}, which does not exist; unset it or point it at libonnxruntime.so (version {ORT_VERSION} or newer)"
    )]
    EnvMissing { path: PathBuf },
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error(
        "no ONNX Runtime library found ({tried}) and automatic install is off ({ENV_NO_INSTALL}); run `python3 -m pip install onnxruntime=={ORT_VERSION}` or set {ENV_DYLIB}"
    )]
    NotFound { tried: String },
    #[error(
        "installing onnxruntime {ORT_VERSION} with pip into {dir} failed: {reason}; install it yourself (`python3 -m pip install onnxruntime=={ORT_VERSION}`) or set {ENV_DYLIB}"
    )]
    Install { dir: PathBuf, reason: String },
}

/// Where the library came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LibSource {
    EnvVar,
    PythonPackage,
    Cache,
    Installed,
}

impl std::fmt::Display for LibSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LibSource::EnvVar => ENV_DYLIB,
            LibSource::PythonPackage => "python package",
            LibSource::Cache => "user cache",
            LibSource::Installed => "user cache (installed now)",
        })
    }
}

/// The loaded library and the process's one ort environment.
pub struct OrtLib {
    pub path: PathBuf,
    pub source: LibSource,
    pub version: String,
    pub environment: ort::environment::Environment,
}

static LIB: OnceLock<Result<OrtLib, OrtLibError>> = OnceLock::new();

/// Finds, loads and initializes ONNX Runtime once per process.
pub fn load() -> Result<&'static OrtLib, OrtLibError> {
    LIB.get_or_init(|| {
        let (path, source) = locate()?;
        init(&path, source)
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn init(path: &Path, source: LibSource) -> Result<OrtLib, OrtLibError> {
    let load_err = |reason: String| OrtLibError::Load {
        path: path.to_owned(),
        reason,
    };
    // dlopen's own words for a library of another architecture are obscure ("wrong ELF class",
    // "cannot open shared object file"); say what is wrong and what to get instead.
    if let Some(machine) = foreign_machine(path) {
        return Err(load_err(format!(
            "it is built for {machine}, but this efficientad is built for {}; install the {} onnxruntime (on a Jetson: NVIDIA's onnxruntime-gpu wheel for its JetPack) and point {ENV_DYLIB} at its libonnxruntime.so",
            std::env::consts::ARCH,
            std::env::consts::ARCH
        )));
    }
    let builder = ort::init_from(path).map_err(|e| load_err(e.to_string()))?;
    let environment = builder
        .with_name("efficientad")
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    let version = ort::info()
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or(ORT_VERSION)
        .trim_end_matches(',')
        .to_string();
    Ok(OrtLib {
        path: path.to_owned(),
        source,
        version,
        environment,
    })
}

/// The ELF `e_machine` code of the architecture this binary is built for.
fn own_machine() -> Option<u16> {
    match std::env::consts::ARCH {
        "x86_64" => Some(0x3E),
        "aarch64" => Some(0xB7),
        _ => None,
    }
}

/// The architecture a shared library is built for, if its ELF header names one other than this
/// binary's. Files that are not ELF, or unreadable, are left to the loader to judge.
pub fn foreign_machine(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut header = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .ok()?;
    if header[..4] != *b"\x7fELF" {
        return None;
    }
    // e_machine sits at byte 18 in both ELF classes, in the file's byte order (byte 5).
    let raw = [header[18], header[19]];
    let machine = if header[5] == 2 {
        u16::from_be_bytes(raw)
    } else {
        u16::from_le_bytes(raw)
    };
    if Some(machine) == own_machine() || own_machine().is_none() {
        return None;
    }
    Some(match machine {
        0x03 => "x86 (32-bit)".to_string(),
        0x28 => "32-bit ARM".to_string(),
        0x3E => "x86_64".to_string(),
        0xB7 => "aarch64".to_string(),
        0xF3 => "RISC-V".to_string(),
        0x15 => "PowerPC 64".to_string(),
        other => format!("ELF machine {other:#06x}"),
    })
}

/// Applies the search order without loading anything.
pub fn locate() -> Result<(PathBuf, LibSource), OrtLibError> {
    if let Some(value) = std::env::var_os(ENV_DYLIB).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        if !path.is_file() {
            return Err(OrtLibError::EnvMissing { path });
        }
        return Ok((path, LibSource::EnvVar));
    }
    let mut tried = vec![format!("{ENV_DYLIB} unset")];
    match python_package_lib() {
        Ok(path) => return Ok((path, LibSource::PythonPackage)),
        Err(why) => tried.push(why),
    }
    let cached = cache_dir().join(format!("onnxruntime-{ORT_VERSION}"));
    let cached_lib = wheel_lib(&cached);
    if cached_lib.is_file() {
        return Ok((cached_lib, LibSource::Cache));
    }
    tried.push(format!("no copy in {}", cached.display()));
    if std::env::var_os(ENV_NO_INSTALL).is_some_and(|v| !v.is_empty() && v != "0") {
        return Err(OrtLibError::NotFound {
            tried: tried.join("; "),
        });
    }
    install(&cached)?;
    Ok((cached_lib, LibSource::Installed))
}

fn python() -> String {
    std::env::var(ENV_PYTHON).unwrap_or_else(|_| "python3".into())
}

/// The library inside an unpacked onnxruntime wheel / site-packages folder.
fn wheel_lib(site: &Path) -> PathBuf {
    site.join("onnxruntime").join("capi").join(LIB_NAME)
}

/// Asks python for its onnxruntime package (CPU or GPU build: both install `onnxruntime`).
fn python_package_lib() -> Result<PathBuf, String> {
    let py = python();
    let script = "import importlib.util as u, os\n\
                  s = u.find_spec('onnxruntime')\n\
                  print(os.path.join(os.path.dirname(s.origin), 'capi') if s and s.origin else '')";
    let out = Command::new(&py)
        .args(["-c", script])
        .output()
        .map_err(|e| format!("{py} not runnable ({e})"))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || dir.is_empty() {
        return Err(format!("{py} has no onnxruntime package"));
    }
    let capi = PathBuf::from(&dir);
    // Prefer the exact pinned file; accept any other versioned libonnxruntime.so.1.x there.
    let exact = capi.join(LIB_NAME);
    if exact.is_file() {
        return Ok(exact);
    }
    std::fs::read_dir(&capi)
        .ok()
        .and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so.1"))
            })
        })
        .ok_or_else(|| format!("{py}'s onnxruntime package has no libonnxruntime.so in {dir}"))
}

/// The user cache folder.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_CACHE).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("efficientad");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("efficientad")
}

/// Installs the pinned CPU wheel into `dir` (pip `--target`, no dependencies: only the shared
/// library is used).
fn install(dir: &Path) -> Result<(), OrtLibError> {
    let py = python();
    crate::log_line!(
        "efficientad: ONNX Runtime not found; installing onnxruntime=={ORT_VERSION} into {} (one time, ~30 MB; set {ENV_NO_INSTALL}=1 to forbid)",
        dir.display()
    );
    let err = |reason: String| OrtLibError::Install {
        dir: dir.to_owned(),
        reason,
    };
    let staging = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    let status = Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&staging)
        .arg(format!("onnxruntime=={ORT_VERSION}"))
        .status()
        .map_err(|e| err(format!("cannot run {py} -m pip ({e})")))?;
    if !status.success() {
        return Err(err(format!("pip exited with {status}")));
    }
    if !wheel_lib(&staging).is_file() {
        return Err(err(format!("the wheel has no {LIB_NAME}")));
    }
    // Rename at the end so an interrupted install never looks like a finished one.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir).map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_header(machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // 64-bit
        h[5] = 1; // little-endian
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn a_library_of_another_architecture_is_named_as_such() {
        let dir = std::env::temp_dir().join(format!("efficientad-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("libonnxruntime.so");

        std::fs::write(&file, elf_header(0xF3)).expect("write");
        assert_eq!(foreign_machine(&file).as_deref(), Some("RISC-V"));

        let own = own_machine().expect("x86_64 or aarch64");
        std::fs::write(&file, elf_header(own)).expect("write");
        assert_eq!(foreign_machine(&file), None);

        // The other of the two supported architectures.
        let other = if own == 0x3E { 0xB7 } else { 0x3E };
        std::fs::write(&file, elf_header(other)).expect("write");
        let named = foreign_machine(&file).expect("foreign");
        assert!(named == "x86_64" || named == "aarch64", "{named}");
        assert_ne!(named, std::env::consts::ARCH);

        // Not ELF at all: the loader's business.
        std::fs::write(&file, b"not a shared library").expect("write");
        assert_eq!(foreign_machine(&file), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
