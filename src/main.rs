//! The `re6st` command: parses the command line and dispatches to the
//! library. Each subcommand's options live in `cmd/<name>.rs`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod cmd;

/// Resilient, scalable IPv6 mesh VPN.
#[derive(Parser)]
#[command(name = "re6st", version, about, propagate_version = true)]
struct Cli {
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The registry: create the CA, serve the API, administer it.
    Registry(cmd::registry::RegistryArgs),
    /// Enroll this machine: fetch the CA and a certificate from a registry.
    Conf(cmd::conf::ConfArgs),
    /// Show the running node's state (over its control socket).
    Status(cmd::status::StatusArgs),
    /// Run the Babel router standalone on some interfaces (like babeld).
    Babel(cmd::babel::Args),
    /// Bring up tunnels without the node: a throw-away PKI, tunnels of one
    /// transport (tests and benchmarks).
    #[command(hide = true)]
    Tunnel(cmd::tunnel::TunnelArgs),
    /// Run the node: join the mesh and route for it.
    Node(cmd::node::NodeCmd),
    /// A registry and N nodes in network namespaces on this machine,
    /// converging into a mesh (needs root).
    Demo(cmd::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The node logs where --log says and has its own exit statuses.
    if !matches!(cli.command, Command::Node(_)) {
        init_logging(cli.verbose);
    }
    let result: anyhow::Result<()> = match cli.command {
        Command::Registry(a) => cmd::registry::run(a),
        Command::Conf(a) => cmd::conf::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Babel(args) => cmd::babel::run(args),
        Command::Tunnel(args) => cmd::tunnel::run(args),
        Command::Node(a) => return cmd::node::main(a, cli.verbose),
        Command::Demo(args) => cmd::demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("re6st: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
