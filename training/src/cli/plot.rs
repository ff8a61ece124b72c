//! `efficientad-train plot`: the quality checkpoints of `fit --eval-every` runs (image AUROC,
//! pixel AUROC, AU-PRO against student steps, one line per run) to a PNG, and as a table.

use std::path::PathBuf;

use clap::Args;
use efficientad_training::tools::curves;

#[derive(Args)]
pub struct PlotArgs {
    /// Run folders (fit's --work), each optionally with its legend label: DIR or DIR=LABEL.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<String>,
    /// PNG to write.
    #[arg(long)]
    pub out: PathBuf,
    /// TrueType font for the labels (default: DejaVu Sans or Liberation Sans from the system).
    #[arg(long)]
    pub font: Option<PathBuf>,
}

pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let PlotArgs { runs, out, font } = args;
    let runs = runs
        .iter()
        .map(|arg| {
            let (dir, label) = match arg.split_once('=') {
                Some((dir, label)) => (PathBuf::from(dir), label.to_string()),
                None => {
                    let dir = PathBuf::from(arg);
                    let label = dir
                        .file_name()
                        .map_or_else(|| arg.clone(), |n| n.to_string_lossy().into_owned());
                    (dir, label)
                }
            };
            curves::Run::read(&dir, label)
        })
        .collect::<Result<Vec<_>, _>>()?;
    curves::load_font(font.as_deref())?;
    curves::plot(&runs, &out)?;
    print!("{}", curves::table(&runs));
    eprintln!("efficientad-train: wrote {}", out.display());
    Ok(())
}
