//! Where training computes: Burn's CPU backend (`flex`, the default), or a GPU through Burn's
//! `wgpu` backend (Vulkan on NVIDIA) when the crate is built with `--features wgpu`.
//!
//! A wgpu run names the adapter it chose. Vulkan also offers software adapters (Mesa's
//! lavapipe, "llvmpipe"): they are far slower than `--device cpu`, so one is used only when
//! asked for (`--allow-cpu-adapter`, as CI does to run the GPU code path without a GPU).

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
    /// The best GPU wgpu finds through Vulkan (build with `--features wgpu`).
    Wgpu,
}

/// What a GPU box needs for wgpu (said when no GPU adapter is found, and by `doctor`).
pub const GPU_SETUP_ADVICE: &str = "on an NVIDIA box: install the Vulkan loader (Debian/Ubuntu `libvulkan1`) and make sure the NVIDIA driver's Vulkan ICD is registered (/usr/share/vulkan/icd.d/nvidia_icd.json, from the driver package, e.g. `libnvidia-gl-<version>`); in a container also grant the `graphics` driver capability (NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics). `vulkaninfo --summary` (package vulkan-tools) shows what Vulkan sees";

/// The error when wgpu finds no adapter at all.
pub fn no_adapter() -> String {
    format!("no Vulkan adapter found; {GPU_SETUP_ADVICE}")
}

/// A Vulkan adapter, as `doctor` and the start of a wgpu run name it.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    pub name: String,
    pub backend: String,
    pub driver: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other`.
    pub device_type: String,
    /// The position among adapters of the same type (what Burn's device selector counts).
    pub index: usize,
}

impl Adapter {
    pub fn is_cpu(&self) -> bool {
        self.device_type == "Cpu"
    }

    /// Preference order: a discrete GPU first, a software adapter last.
    fn rank(&self) -> u8 {
        match self.device_type.as_str() {
            "DiscreteGpu" => 0,
            "Other" => 1,
            "IntegratedGpu" => 2,
            "VirtualGpu" => 3,
            _ => 4,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {}, driver {})",
            self.name, self.device_type, self.backend, self.driver
        )
    }
}

/// The adapter a wgpu run takes among `adapters`, or why there is none.
pub fn choose(adapters: &[Adapter], allow_cpu_adapter: bool) -> Result<&Adapter, String> {
    let best = adapters.iter().min_by_key(|a| a.rank());
    match best {
        None => Err(no_adapter()),
        Some(a) if a.is_cpu() && !allow_cpu_adapter => Err(format!(
            "the only Vulkan adapter is a software one, {}: it trains slower than `--device cpu`. Use a GPU ({GPU_SETUP_ADVICE}), or pass --allow-cpu-adapter to run on it anyway (tests)",
            a.describe()
        )),
        Some(a) => Ok(a),
    }
}

/// The Vulkan adapters of this machine.
#[cfg(feature = "wgpu")]
pub fn adapters() -> Vec<Adapter> {
    let backends = wgpu::Backends::VULKAN;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    block_on(instance.enumerate_adapters(backends))
        .iter()
        .map(|adapter| {
            let info = adapter.get_info();
            let device_type = format!("{:?}", info.device_type);
            let index = seen.entry(device_type.clone()).or_default();
            let a = Adapter {
                name: info.name,
                backend: format!("{:?}", info.backend),
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_owned(),
                device_type,
                index: *index,
            };
            *index += 1;
            a
        })
        .collect()
}

/// Built without wgpu: no adapters to list.
#[cfg(not(feature = "wgpu"))]
pub fn adapters() -> Vec<Adapter> {
    Vec::new()
}

/// Runs a future that native wgpu completes without waiting (adapter enumeration).
#[cfg(feature = "wgpu")]
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = future.as_mut().poll(&mut context) {
            return v;
        }
        std::thread::yield_now();
    }
}

impl Backend {
    /// The plain (inference) device; a wgpu run names its adapter on stderr.
    pub fn device(self, allow_cpu_adapter: bool) -> Result<Device, String> {
        match self {
            Backend::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => {
                use burn::tensor::DeviceKind;
                let adapters = adapters();
                let chosen = choose(&adapters, allow_cpu_adapter)?;
                eprintln!("efficientad-train: wgpu adapter: {}", chosen.describe());
                let kind = match chosen.device_type.as_str() {
                    "DiscreteGpu" => DeviceKind::DiscreteGpu(chosen.index),
                    "IntegratedGpu" => DeviceKind::IntegratedGpu(chosen.index),
                    "VirtualGpu" => DeviceKind::VirtualGpu(chosen.index),
                    "Cpu" => DeviceKind::Cpu,
                    // Burn's selector has no `Other`; its default picks it the same way.
                    _ => DeviceKind::DefaultDevice,
                };
                Ok(Device::wgpu(kind))
            }
            #[cfg(not(feature = "wgpu"))]
            Backend::Wgpu => {
                let _ = allow_cpu_adapter;
                Err(
                    "this efficientad-train was built without GPU support: rebuild with `cargo build --release -p efficientad-training --features wgpu`"
                        .into(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(name: &str, device_type: &str) -> Adapter {
        Adapter {
            name: name.into(),
            backend: "Vulkan".into(),
            driver: "d".into(),
            device_type: device_type.into(),
            index: 0,
        }
    }

    #[test]
    fn a_gpu_is_preferred_and_a_software_adapter_needs_consent() {
        let lavapipe = adapter("llvmpipe", "Cpu");
        let h200 = adapter("NVIDIA H200", "DiscreteGpu");
        let igpu = adapter("Intel", "IntegratedGpu");
        let all = [lavapipe.clone(), igpu.clone(), h200.clone()];
        assert_eq!(choose(&all, false), Ok(&h200));
        assert_eq!(choose(&[lavapipe.clone(), igpu.clone()], false), Ok(&igpu));
        let refused = choose(std::slice::from_ref(&lavapipe), false).expect_err("software");
        assert!(refused.contains("--allow-cpu-adapter") && refused.contains("llvmpipe"));
        assert_eq!(choose(std::slice::from_ref(&lavapipe), true), Ok(&lavapipe));
        let none = choose(&[], true).expect_err("none");
        assert!(none.contains("libvulkan1") && none.contains("graphics"));
    }
}
