//! The `bosh-nats-sync` command line: parse arguments, load the configuration, start
//! logging, run the chosen mode, map the outcome to an exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bosh_nats_sync::config::Config;
use bosh_nats_sync::{modes, telemetry};

/// Keeps a BOSH director's NATS users in line with the director's VMs.
#[derive(Parser)]
#[command(version = modes::VERSION, about, long_about = None)]
struct Cli {
    /// The configuration file (the BOSH job's bosh_nats_sync_config.yml).
    #[arg(short, long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller until SIGTERM or SIGINT (the default).
    Run,
    /// Reconcile once and exit: status 0 when the file and nats-server are converged, 1 when not.
    Once,
    /// Print the users a pass would add, remove or change, without writing or reloading:
    /// status 0 when in sync, 3 when a pass would change something, 1 on error.
    Diff,
    /// Validate the configuration file (keys, values, CA files) and exit: 0 valid, 2 not.
    CheckConfig,
    /// Write the auth file nats-server should start with, from the configuration and the
    /// subject files alone (no director): the director and health monitor users and the agents
    /// already in the file, or in callout mode the auth_callout block. 0 written (or already
    /// so), 2 the configuration cannot work, 1 the file cannot be written.
    Init,
    /// Print a new issuer key for callout mode, one NAME=value a line: ISSUER_SEED, ISSUER
    /// (and a curve pair, XKEY_SEED and XKEY, with --xkey). Needs no configuration.
    CalloutKeys {
        /// Also print a curve key pair, for nats-server to seal requests with.
        #[arg(long)]
        xkey: bool,
    },
    /// Run against a built-in simulated director (no configuration needed): see the README.
    #[cfg(feature = "demo")]
    Demo(bosh_nats_sync::demo::DemoArgs),
    /// Built without the `demo` feature: any arguments are accepted, and refused with one line.
    #[cfg(not(feature = "demo"))]
    #[command(hide = true, disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        _args: Vec<std::ffi::OsString>,
    },
}

/// `--help` and `--version` print as usual; a usage error is one line on stderr, status 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or("invalid usage")
        .trim_start_matches("error: ");
    eprintln!("bosh-nats-sync: {first} (see bosh-nats-sync --help)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let command = cli.command.unwrap_or(Command::Run);
    #[cfg(feature = "demo")]
    if let Command::Demo(args) = command {
        return bosh_nats_sync::demo::demo(args);
    }
    #[cfg(not(feature = "demo"))]
    if let Command::Demo { .. } = command {
        eprintln!(
            "bosh-nats-sync: this binary was built without the demo feature (cargo build --features demo)"
        );
        return ExitCode::from(2);
    }
    if let Command::CalloutKeys { xkey } = command {
        return modes::callout_keys(xkey);
    }
    let Some(path) = cli.config else {
        eprintln!("bosh-nats-sync: a configuration file is required: bosh-nats-sync -c FILE");
        return ExitCode::from(2);
    };
    let env = |k: &str| std::env::var(k).ok();
    // `init` never asks the director: a pod's init step runs it without the director's secret.
    let loaded = match command {
        Command::Init => Config::load_for_init(&path, env),
        _ => Config::load(&path, env),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bosh-nats-sync: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig = command {
        return modes::check_config(&config);
    }
    if let Command::Init = command {
        return modes::init(&config);
    }
    if let Err(e) = telemetry::init(
        config.log_format,
        &config.log_level,
        config.logfile.as_deref(),
    ) {
        eprintln!("bosh-nats-sync: {e}");
        return ExitCode::from(2);
    }
    for key in &config.unknown_keys {
        tracing::warn!(file = %config.path.display(), key, "ignoring an unknown configuration key");
    }
    let code = match command {
        Command::Run => modes::run(config),
        Command::Once => modes::once(config),
        Command::Diff => modes::diff(config),
        Command::CheckConfig
        | Command::Init
        | Command::CalloutKeys { .. }
        | Command::Demo { .. } => {
            unreachable!("handled above")
        }
    };
    // After the runtime is gone: the last pass's spans reach the collector before exit.
    telemetry::shutdown();
    code
}
