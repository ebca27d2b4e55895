//! `courier-loadgen`: see `courier-loadgen --help`. Exit status: 0 when every acknowledged
//! message was delivered exactly once and in order, 1 when some were lost, duplicated or out of
//! order, 2 when the run itself failed.

use std::process::ExitCode;

use clap::Parser;
use courier_loadgen::{Cli, Command, Error};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Worker = cli.command {
        return match courier_loadgen::run_worker() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("courier-loadgen worker: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Probe(args) = &cli.command {
        return match courier_loadgen::probe::run(&cli.common, args) {
            Ok(report) => {
                let json = report.to_json();
                println!("{json}");
                if let Some(path) = &cli.common.json {
                    if let Err(source) = std::fs::write(path, format!("{json}\n")) {
                        let path = path.clone();
                        eprintln!("courier-loadgen: {}", Error::WriteReport { path, source });
                        return ExitCode::from(2);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("courier-loadgen: {e}");
                ExitCode::from(2)
            }
        };
    }
    let report = match courier_loadgen::run(&cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("courier-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let json = report.to_json();
    println!("{json}");
    if let Some(path) = &cli.common.json {
        if let Err(source) = std::fs::write(path, format!("{json}\n")) {
            eprintln!(
                "courier-loadgen: {}",
                Error::WriteReport {
                    path: path.clone(),
                    source
                }
            );
            return ExitCode::from(2);
        }
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "courier-loadgen: FAILED verification: lost {}, duplicates {}, out of order {}, stale acks {}",
            report.lost, report.duplicates, report.out_of_order, report.stale_acks
        );
        ExitCode::from(1)
    }
}
