//! `rouse-sim`: trace-driven autoscaling simulation, rouse vs KPA-like vs
//! HPA-like. See [`rouse_sim`].

use std::process::ExitCode;

use clap::Parser;
use rouse_sim::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    let out = args.out.clone();
    match rouse_sim::main(args) {
        Ok(outcome) => {
            print!("{}", rouse_sim::summary_markdown(&outcome.runs));
            if !outcome.signal_runs.is_empty() {
                print!("{}", rouse_sim::signals_markdown(&outcome.all()));
            }
            println!("written to {}", out.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("rouse-sim: {err:#}");
            ExitCode::FAILURE
        }
    }
}
