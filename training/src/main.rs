//! `efficientad-train`: teacher import and distillation, training, export of deployment
//! bundles, the training benchmark and its plots. Thin: parse, call the command's file under
//! `cli/`, map errors to the exit status.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// Training frees and reallocates tensors of tens of MiB at every operation. glibc's allocator
/// returns such blocks to the kernel at once (munmap), so each step paid for page faults,
/// zeroing and cross-core TLB shootdowns; mimalloc keeps the pages for the next tensor.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (mimalloc.h; the Rust bindings name no
/// constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed pages mapped for the next tensor instead of returning them to the kernel after
/// mimalloc's default 10 ms: a training step frees and reallocates the same sizes every second,
/// and each returned page came back as a page fault plus zeroing (5% of a `fit` step). The
/// peak memory stays that of one step (measured 741 MiB against 670 MiB for the `bench` steps).
fn keep_freed_pages() {
    // SAFETY: sets one integer option of the allocator; called first thing in `main`, before
    // any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

/// Burn materializes a loaded optimizer state on its *default* device (`ModuleOptimizer::
/// load_record` takes none), and in a build with the `wgpu` feature that default is the GPU:
/// resuming a CPU run then opened a Vulkan (or GL) instance — a GPU context on a GPU box,
/// Mesa's "XDG_RUNTIME_DIR is invalid" lines elsewhere, a failure where no driver works. The
/// state only needs host memory: Burn moves each tensor to its parameter's device at the next
/// step. So the default is the CPU backend, unless the user chose one (`BURN_DEVICE`).
fn default_device_on_cpu() {
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("BURN_DEVICE", "flex");
        }
    }
}

fn main() -> ExitCode {
    keep_freed_pages();
    default_device_on_cpu();
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("efficientad-train: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
