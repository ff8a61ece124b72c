//! Where training computes: Burn's CPU backend (`flex`, the default), or a GPU through Burn's
//! `wgpu` backend (Vulkan on NVIDIA) when the crate is built with `--features wgpu`.

use burn::tensor::Device;

/// The compute device of a run.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Burn's flex CPU backend (SIMD, all cores).
    #[default]
    Cpu,
    /// The first discrete GPU through wgpu/Vulkan (build with `--features wgpu`).
    Wgpu,
}

impl Backend {
    /// The plain (inference) device.
    pub fn device(self) -> Result<Device, String> {
        match self {
            Backend::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(0))),
            #[cfg(not(feature = "wgpu"))]
            Backend::Wgpu => Err(
                "this efficientad-train was built without GPU support: rebuild with `cargo build --release -p efficientad-training --features wgpu`"
                    .into(),
            ),
        }
    }
}
