//! `efficientad`: the line-side inspection runtime. Parses the command line and hands over to
//! one module per subcommand under `cli/`; exit codes are documented in `--help`.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
