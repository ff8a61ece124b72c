//! Import of the public pretrained PDN teacher from a PyTorch `state_dict` file.
//!
//! Two key styles exist for the same weights: `nn.Sequential` indices (`0.weight`, `3.bias`…,
//! the reproduction's `teacher_small.pth`) and named layers (`conv1.weight`…, anomalib's copy).
//! Both map onto [`Pdn`]'s `conv1`…`conv6`. Every tensor is checked for presence, dtype and
//! shape before anything is assigned, so a wrong file fails with the key it tripped on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::store::pytorch_reader::{DType, PytorchReader};
use burn::tensor::{Device, Tensor, TensorData};

use crate::model::{Pdn, PdnConfig, TEACHER_CHANNELS, Variant};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path} as a PyTorch state_dict: {source}")]
    NotTorchFile {
        path: PathBuf,
        source: efficientad::Cause,
    },
    #[error(
        "{path} does not look like a PDN teacher state_dict: expected keys like `conv1.weight` or \
         `0.weight`, found {found}"
    )]
    UnknownKeys { path: PathBuf, found: String },
    #[error("{path}: key `{key}` is missing for a PDN-{variant} teacher{hint}")]
    MissingKey {
        path: PathBuf,
        key: String,
        variant: Variant,
        hint: String,
    },
    #[error(
        "{path}: key `{key}` has shape {found:?}, a PDN-{variant} teacher needs {expected:?}{hint}"
    )]
    WrongShape {
        path: PathBuf,
        key: String,
        variant: Variant,
        expected: Vec<usize>,
        found: Vec<usize>,
        hint: String,
    },
    #[error("{path}: key `{key}` holds {found:?} values, expected float32")]
    WrongDtype {
        path: PathBuf,
        key: String,
        found: DType,
    },
    #[error("{path}: key `{key}` is not part of a PDN-{variant} teacher{hint}")]
    UnexpectedKey {
        path: PathBuf,
        key: String,
        variant: Variant,
        hint: String,
    },
    #[error("{path}: reading key `{key}` failed: {source}")]
    Read {
        path: PathBuf,
        key: String,
        source: efficientad::Cause,
    },
}

/// `nn.Sequential` index of each convolution in the reference implementation's PDN.
fn sequential_index(variant: Variant) -> &'static [(&'static str, usize)] {
    match variant {
        Variant::Small => &[("conv1", 0), ("conv2", 3), ("conv3", 6), ("conv4", 8)],
        Variant::Medium => &[
            ("conv1", 0),
            ("conv2", 3),
            ("conv3", 6),
            ("conv4", 8),
            ("conv5", 10),
            ("conv6", 12),
        ],
    }
}

/// Which naming the file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStyle {
    Sequential,
    Named,
}

fn detect_style(keys: &[String]) -> Option<KeyStyle> {
    if keys.iter().any(|k| k.starts_with("conv")) {
        Some(KeyStyle::Named)
    } else if keys.iter().any(|k| {
        k.split('.')
            .next()
            .is_some_and(|p| p.parse::<usize>().is_ok())
    }) {
        Some(KeyStyle::Sequential)
    } else {
        None
    }
}

fn other(variant: Variant) -> Variant {
    match variant {
        Variant::Small => Variant::Medium,
        Variant::Medium => Variant::Small,
    }
}

/// Reads a teacher `.pth` into a PDN of the given variant (padding off).
pub fn import_teacher(path: &Path, variant: Variant, device: &Device) -> Result<Pdn, ImportError> {
    import_pdn(path, PdnConfig::new(variant, TEACHER_CHANNELS), device)
}

/// Reads any PDN `state_dict` (a teacher, or a narrowed test network) into `config`'s shape.
pub fn import_pdn(path: &Path, config: PdnConfig, device: &Device) -> Result<Pdn, ImportError> {
    let reader = PytorchReader::new(path).map_err(|e| ImportError::NotTorchFile {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let tensors = reader.into_tensors();
    let mut keys: Vec<String> = tensors.keys().cloned().collect();
    keys.sort();
    let style = detect_style(&keys).ok_or_else(|| ImportError::UnknownKeys {
        path: path.to_owned(),
        found: preview(&keys),
    })?;
    let variant = config.variant;
    // The hint names the other variant when the file's layout matches it instead.
    let hint_other = |style: KeyStyle| {
        let other_keys: Vec<String> = names_for(other(variant), style)
            .into_iter()
            .flat_map(|(_, k)| [format!("{k}.weight"), format!("{k}.bias")])
            .collect();
        if other_keys.iter().all(|k| tensors.contains_key(k)) && other_keys.len() == keys.len() {
            format!(
                " (the file looks like a PDN-{} teacher: pass --variant {})",
                other(variant),
                other(variant)
            )
        } else {
            String::new()
        }
    };

    let mut pdn = config.init(device);
    let expected: HashMap<&str, (Vec<usize>, Vec<usize>)> = pdn
        .convs()
        .into_iter()
        .map(|(name, conv)| {
            let w = conv.weight.dims().to_vec();
            (name, (w.clone(), vec![w[0]]))
        })
        .collect();

    let names = names_for(variant, style);
    let mut used = Vec::new();
    let mut loaded: HashMap<&str, (Vec<f32>, Vec<f32>)> = HashMap::new();
    for (canonical, file_name) in &names {
        let (w_shape, b_shape) = &expected[canonical];
        let mut pair = Vec::new();
        for (suffix, shape) in [("weight", w_shape), ("bias", b_shape)] {
            let key = format!("{file_name}.{suffix}");
            let tensor = tensors.get(&key).ok_or_else(|| ImportError::MissingKey {
                path: path.to_owned(),
                key: key.clone(),
                variant,
                hint: hint_other(style),
            })?;
            if tensor.shape() != shape.as_slice() {
                return Err(ImportError::WrongShape {
                    path: path.to_owned(),
                    key,
                    variant,
                    expected: shape.clone(),
                    found: tensor.shape().to_vec(),
                    hint: hint_other(style),
                });
            }
            if tensor.dtype() != DType::F32 {
                return Err(ImportError::WrongDtype {
                    path: path.to_owned(),
                    key,
                    found: tensor.dtype(),
                });
            }
            let bytes = tensor.read().map_err(|e| ImportError::Read {
                path: path.to_owned(),
                key: key.clone(),
                source: e.into(),
            })?;
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            pair.push(values);
            used.push(key);
        }
        let bias = pair.pop().unwrap_or_default();
        let weight = pair.pop().unwrap_or_default();
        loaded.insert(canonical, (weight, bias));
    }
    if let Some(extra) = keys.iter().find(|k| !used.contains(k)) {
        return Err(ImportError::UnexpectedKey {
            path: path.to_owned(),
            key: extra.clone(),
            variant,
            hint: hint_other(style),
        });
    }

    let assign = |conv: &mut Conv2d, name: &str| {
        let (w, b) = &loaded[name];
        let (w_shape, b_shape) = &expected[name];
        conv.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(w.clone(), w_shape.clone()),
            device,
        ));
        conv.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b.clone(), b_shape.clone()),
            device,
        )));
    };
    assign(&mut pdn.conv1, "conv1");
    assign(&mut pdn.conv2, "conv2");
    assign(&mut pdn.conv3, "conv3");
    assign(&mut pdn.conv4, "conv4");
    if let Some(c) = pdn.conv5.as_mut() {
        assign(c, "conv5");
    }
    if let Some(c) = pdn.conv6.as_mut() {
        assign(c, "conv6");
    }
    Ok(pdn)
}

/// (canonical name, name in the file) for each convolution.
fn names_for(variant: Variant, style: KeyStyle) -> Vec<(&'static str, String)> {
    sequential_index(variant)
        .iter()
        .map(|&(name, index)| {
            let in_file = match style {
                KeyStyle::Named => name.to_string(),
                KeyStyle::Sequential => index.to_string(),
            };
            (name, in_file)
        })
        .collect()
}

fn preview(keys: &[String]) -> String {
    if keys.is_empty() {
        return "no tensors".into();
    }
    let shown: Vec<&str> = keys.iter().take(6).map(String::as_str).collect();
    let more = keys.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}
