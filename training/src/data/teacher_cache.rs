//! The frozen teacher's outputs on the unaugmented training images, computed once per run:
//! the channel statistics μ, σ (docs/method.md: over all training images, pixels pooled) and
//! the normalized outputs T̂ = (T − μ)/σ of as many images as the memory budget holds.
//!
//! The teacher itself is passed in as a function, so this module needs no network code.

use std::borrow::Cow;

use super::sample::network_input;

/// Memory for cached teacher outputs (4.8 MB per image for PDN-S). 665 MTD training images
/// would need 3.2 GB, which with the rest of a run passed 4 GiB; beyond the budget, a step
/// runs the teacher on its training image again (~0.2 s on 2 cores), an exact recomputation.
pub const TEACHER_CACHE_BYTES: usize = 2 << 30;

/// The frozen teacher as this module sees it: a CHW image → its raw `[C·H·W]` output.
pub type TeacherFn<'a, E> = dyn FnMut(&[f32]) -> Result<Vec<f32>, E> + 'a;

/// μ, σ and the cached T̂ of the training images.
pub struct TeacherCache {
    /// T̂(I) of the images that fit in [`TEACHER_CACHE_BYTES`], `[C·H·W]`; `None` for the
    /// others, recomputed when asked for.
    outputs: Vec<Option<Vec<f32>>>,
    /// Teacher channel mean μ and population std σ.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl TeacherCache {
    /// Runs `teacher` (a CHW image → raw `[C·H·W]` output) over every training image once.
    pub fn build<E>(
        train: &[Vec<u8>],
        channels: usize,
        normalize_exposure: bool,
        teacher: &mut TeacherFn<'_, E>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, E> {
        let mut stats = ChannelStats::new(channels);
        let mut outputs = Vec::with_capacity(train.len());
        let mut cached = 0usize;
        for (i, px) in train.iter().enumerate() {
            let raw = teacher(&network_input(px, normalize_exposure))?;
            stats.add(&raw);
            let bytes = raw.len() * std::mem::size_of::<f32>();
            if cached + bytes <= TEACHER_CACHE_BYTES {
                cached += bytes;
                outputs.push(Some(raw));
            } else {
                outputs.push(None);
            }
            progress(i + 1, train.len());
        }
        let (mean, std) = stats.finish();
        let mut cache = Self {
            outputs: Vec::new(),
            mean,
            std,
        };
        for out in outputs.iter_mut().flatten() {
            cache.normalize(out);
        }
        cache.outputs = outputs;
        Ok(cache)
    }

    /// T̂(I) of training image `index` (`chw` is that image as the networks see it): from the
    /// cache, or computed now with `teacher`.
    pub fn get<E>(
        &self,
        index: usize,
        chw: &[f32],
        teacher: impl FnOnce(&[f32]) -> Result<Vec<f32>, E>,
    ) -> Result<Cow<'_, [f32]>, E> {
        Ok(match &self.outputs[index] {
            Some(cached) => Cow::Borrowed(cached),
            None => {
                let mut out = teacher(chw)?;
                self.normalize(&mut out);
                Cow::Owned(out)
            }
        })
    }

    /// T̂ = (T − μ) / σ per channel of a `[C·H·W]` teacher output.
    pub fn normalize(&self, values: &mut [f32]) {
        let plane = values.len() / self.mean.len().max(1);
        for (c, channel) in values.chunks_mut(plane.max(1)).enumerate() {
            let (m, s) = (self.mean[c], self.std[c].max(crate::model::MIN_TEACHER_STD));
            channel.iter_mut().for_each(|v| *v = (*v - m) / s);
        }
    }
}

/// Per-channel mean and population std over all pixels of teacher outputs (`[C·H·W]` each),
/// accumulated one output at a time.
struct ChannelStats {
    sum: Vec<f64>,
    sq: Vec<f64>,
    count: f64,
}

impl ChannelStats {
    fn new(channels: usize) -> Self {
        Self {
            sum: vec![0.0; channels],
            sq: vec![0.0; channels],
            count: 0.0,
        }
    }

    /// Adds one `[C·H·W]` output.
    fn add(&mut self, out: &[f32]) {
        let plane = out.len() / self.sum.len().max(1);
        for (c, channel) in out.chunks(plane.max(1)).enumerate().take(self.sum.len()) {
            for &v in channel {
                self.sum[c] += f64::from(v);
                self.sq[c] += f64::from(v) * f64::from(v);
            }
        }
        self.count += plane as f64;
    }

    /// Mean and population std per channel.
    fn finish(self) -> (Vec<f32>, Vec<f32>) {
        let count = self.count;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / count).collect();
        let std: Vec<f32> = self
            .sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / count - m * m).max(0.0)).sqrt() as f32)
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }
}
