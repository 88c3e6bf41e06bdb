//! The `baton` command line. Follows kubectl's conventions: exit code 0 only
//! on success, errors on stderr in one line that says what to do.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "baton", version, about = "Work with baton workflows and runs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check Workflow and WorkflowInstance manifests offline, with the same
    /// checks the controller makes. Prints one line per problem; exits 1 if
    /// there is any.
    Validate {
        /// Manifest files (YAML, several documents allowed); `-` reads stdin.
        #[arg(required = true)]
        files: Vec<String>,
    },
}

fn read(path: &str) -> std::io::Result<String> {
    if path == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(path) }
}

fn validate(paths: &[String]) -> ExitCode {
    let mut files = Vec::new();
    for path in paths {
        match read(path) {
            Ok(text) => files.push((path.clone(), text)),
            Err(e) => {
                eprintln!("error: cannot read {path}: {e}; check the path");
                return ExitCode::from(2);
            }
        }
    }
    let (findings, skipped) = baton::manifests::validate(&files);
    for s in &skipped {
        eprintln!("skipped {s}");
    }
    for f in &findings {
        println!("{f}");
    }
    if findings.is_empty() {
        eprintln!("{} file(s) valid", files.len());
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { files } => validate(&files),
    }
}
