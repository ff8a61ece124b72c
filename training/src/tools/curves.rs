//! `efficientad-train plot`: the quality checkpoints of one or more runs (`fit --eval-every`)
//! drawn against training steps — image AUROC, pixel AUROC and AU-PRO side by side, one line
//! per run — into a PNG, and the same numbers as a Markdown table.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::tools::quality::{Quality, read_quality};

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot read {path}: {source}; is it the --work folder of a `fit --eval-every` run?")]
    Log {
        path: PathBuf,
        source: efficientad::Cause,
    },
    #[error("{0} holds no quality checkpoints; train with `fit --eval-every N`")]
    Empty(PathBuf),
    #[error(
        "no TrueType font found (looked in {0}); install one (Debian: apt install fonts-dejavu-core) or pass --font FILE"
    )]
    NoFont(String),
    #[error("{path} is not a usable TrueType font")]
    BadFont { path: PathBuf },
    #[error("drawing: {0}")]
    Draw(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: efficientad::Cause,
    },
}

/// Fonts tried in order when none is given.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

/// One run's checkpoints and its name in the legend.
pub struct Run {
    pub label: String,
    pub checks: Vec<(usize, Quality)>,
}

impl Run {
    /// Reads `<work>/log.jsonl`.
    pub fn read(work: &Path, label: String) -> Result<Self, PlotError> {
        let log = work.join("log.jsonl");
        let checks = read_quality(&log).map_err(|e| PlotError::Log {
            path: log.clone(),
            source: e.into(),
        })?;
        if checks.is_empty() {
            return Err(PlotError::Empty(log));
        }
        Ok(Self { label, checks })
    }
}

/// One metric of a checkpoint.
type Metric = fn(&Quality) -> Option<f64>;

/// The metrics drawn, in panel order.
const METRICS: [(&str, Metric); 3] = [
    ("image AUROC", |q| q.image_auroc),
    ("pixel AUROC", |q| q.pixel_auroc),
    ("AU-PRO (FPR ≤ 0.3)", |q| q.au_pro),
];

/// Line colours, one per run.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Registers the font plotters draws text with.
pub fn load_font(font: Option<&Path>) -> Result<(), PlotError> {
    let path = match font {
        Some(p) => p.to_owned(),
        None => FONT_CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| PlotError::NoFont(FONT_CANDIDATES.join(", ")))?,
    };
    let bytes = std::fs::read(&path).map_err(|_| PlotError::BadFont { path: path.clone() })?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| PlotError::BadFont { path })
}

fn draw_err(e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Draws the three panels into a `width`x`height` RGB buffer.
fn draw(runs: &[Run], buffer: &mut [u8], width: u32, height: u32) -> Result<(), PlotError> {
    let root = BitMapBackend::with_buffer(buffer, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let max_step = runs
        .iter()
        .flat_map(|r| r.checks.iter().map(|(s, _)| *s))
        .max()
        .unwrap_or(1)
        .max(1);
    // A common y range over all panels, so the panels compare at a glance.
    let values: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.checks.iter())
        .flat_map(|(_, q)| METRICS.iter().filter_map(|(_, f)| f(q)))
        .collect();
    let low = values.iter().copied().fold(1.0f64, f64::min);
    let y_min = ((low - 0.05) * 10.0).floor() / 10.0;
    let y_min = y_min.clamp(0.0, 0.9);
    for (panel, (name, metric)) in root.split_evenly((1, 3)).iter().zip(METRICS) {
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..max_step as f64 * 1.05, y_min..1.0f64)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("student steps")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(draw_err)?;
        for (run, colour) in runs.iter().zip(COLOURS.iter().cycle()) {
            let points: Vec<(f64, f64)> = run
                .checks
                .iter()
                .filter_map(|(s, q)| metric(q).map(|v| (*s as f64, v)))
                .collect();
            let style = ShapeStyle::from(colour).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(draw_err)?
                .label(run.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}

/// Writes the curves of `runs` to `out` (PNG).
pub fn plot(runs: &[Run], out: &Path) -> Result<(), PlotError> {
    let (width, height) = (1500u32, 480u32);
    let mut buffer = vec![0u8; (width * height * 3) as usize];
    draw(runs, &mut buffer, width, height)?;
    let image = image::RgbImage::from_raw(width, height, buffer)
        .ok_or_else(|| PlotError::Draw("buffer size".into()))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| PlotError::Write {
            path: out.to_owned(),
            source: e.into(),
        })?;
    }
    image.save(out).map_err(|e| PlotError::Write {
        path: out.to_owned(),
        source: e.into(),
    })
}

/// The checkpoints of `runs` as a Markdown table.
pub fn table(runs: &[Run]) -> String {
    let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
    let mut out = String::from(
        "| run | student steps | image AUROC | pixel AUROC | AU-PRO | accuracy at threshold |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        for (step, q) in &run.checks {
            out.push_str(&format!(
                "| {} | {step} | {} | {} | {} | {:.3} |\n",
                run.label,
                f(q.image_auroc),
                f(q.pixel_auroc),
                f(q.au_pro),
                q.accuracy
            ));
        }
    }
    out
}
