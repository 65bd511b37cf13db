//! `loadtest`: load generator, peer echo servers and comparison harness for
//! ringecho. See `loadtest --help`.

mod affinity;
mod chart;
mod cli;
mod client;
mod compare;
mod compare_tls;
mod cpu_time;
mod deflate;
mod nginx;
mod peers;
mod process;
mod report;
mod server_watch;
mod soak;
mod stats;
mod tls;

use std::process::ExitCode;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1).collect()) {
        Ok(c) => c,
        Err(msg) if msg.is_empty() => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("loadtest: {msg}\n\nRun 'loadtest --help' for usage.");
            return ExitCode::from(2);
        }
    };
    match command {
        cli::Command::Help => {
            print!("{}", cli::HELP);
            ExitCode::SUCCESS
        }
        cli::Command::Load(args) => {
            let json = args.json;
            match client::run(args) {
                Ok(report) => {
                    if json {
                        match serde_json::to_string(&report) {
                            Ok(s) => println!("{s}"),
                            Err(e) => {
                                eprintln!("loadtest: {e}");
                                return ExitCode::FAILURE;
                            }
                        }
                    } else {
                        print!("{}", report.text());
                    }
                    if report.error_total > 0 || report.connections_open == 0 {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("loadtest: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        cli::Command::Peer(p) => match peers::run(p) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadtest peer: {e}");
                ExitCode::FAILURE
            }
        },
        cli::Command::Soak(s) => match soak::run(s) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("loadtest soak: a check failed (see the table)");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("loadtest soak: {e}");
                ExitCode::FAILURE
            }
        },
        cli::Command::Compare(c) => match compare::run(c) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadtest compare: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
