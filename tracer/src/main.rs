//! The `tracer` command.

use std::process::ExitCode;

use clap::Parser as _;
use tracer::{
    cli::{Cli, Command},
    error::UsageError,
};

fn main() -> ExitCode {
    if tracer::cli::may_load_programs(std::env::args_os()) {
        // Before anything else, while the process is smallest: see the function.
        tracer::kernel::prepare_loader();
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // One line, the way every other error is reported; --help has the rest.
            // clap lists what is missing on the lines after one ending with ':'.
            let text = err.to_string();
            let mut lines = text.lines();
            let mut first = lines.next().unwrap_or_default().to_owned();
            if first.ends_with(':') {
                let listed: Vec<&str> = lines
                    .take_while(|line| !line.trim().is_empty())
                    .map(str::trim)
                    .collect();
                first = format!("{first} {}", listed.join(", "));
            }
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            eprintln!("tracer: error: {first} (see tracer --help)");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tracer: error: failed to start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => tracer::commands::trace(cli.trace).await,
            Some(Command::Topology { output }) => tracer::commands::topology(output).await,
            Some(Command::Doctor) => tracer::commands::doctor(),
            Some(Command::Monitor(args)) => tracer::commands::monitor(args).await,
            Some(Command::Replay {
                file,
                output,
                max_flows,
            }) => tracer::commands::replay(&file, output, max_flows as usize),
            Some(Command::Merge(args)) => tracer::commands::merge(&args.into()),
            Some(Command::Probe(args)) => tracer::probe::run(args).await,
            Some(Command::Report(args)) => tracer::commands::report(&args.into()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // It worked, and the answer is no (a probe that was not delivered).
        Err(err) if err.downcast_ref::<tracer::error::Negative>().is_some() => {
            eprintln!("tracer: {err:#}");
            ExitCode::from(1)
        }
        // What the user asked for cannot be done: usage error.
        Err(err) if err.downcast_ref::<UsageError>().is_some() => {
            eprintln!("tracer: error: {err:#}");
            ExitCode::from(2)
        }
        // The machine cannot do it: environment error.
        Err(err) => {
            eprintln!("tracer: error: {err:#}");
            ExitCode::from(1)
        }
    }
}
