//! `distlock`: distributed locks in Redis from the shell.
//!
//! ```text
//! distlock --url redis://redis.internal run -n nightly-report -- /usr/local/bin/report
//! distlock inspect --json nightly-report
//! distlock wait -w 60 nightly-report
//! ```
//!
//! `distlock --help` lists the options. The exit codes are documented in
//! the `exit` module and in the README's "Command line" section.

mod args;
mod connect;
mod exit;
mod log;
mod run;
mod wait;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::Failure;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if usage { exit::USAGE } else { 0 });
        }
    };
    log::init(cli.verbose);
    let code = match execute(cli) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("{failure}");
            failure.code
        }
    };
    ExitCode::from(code)
}

fn execute(cli: Cli) -> Result<u8, Failure> {
    let config = connect::resolve(&cli.connection)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::INTERNAL, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let locker = connect::locker(&config, &cli.connection.prefix)?;
        match cli.command {
            Command::Run(args) => run::run(&locker, args).await,
            Command::Inspect(args) => wait::inspect(&locker, &args).await,
            Command::Wait(args) => wait::wait(&locker, &args).await,
        }
    })
}
