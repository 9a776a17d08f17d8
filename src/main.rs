//! inference-gateway's command line: configuration, `hash-key`, and the server (`lib.rs`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use inference_gateway::config::Config;
use inference_gateway::{access_log, auth, build_server, prepare, Launch};

/// Command line. Everything else is configuration (TOML file, then environment).
#[derive(Parser, Debug)]
#[command(name = "inference-gateway", version, about)]
struct Cli {
    /// Configuration file (TOML). Default: conf/gateway.toml when it exists, else built-in defaults.
    #[arg(short = 'c', long = "conf")]
    conf: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (daemon).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take over the listening sockets of a running instance (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Make a new virtual API key and print the `[[keys]]` entry; with `--stdin`, hash a key
    /// read from standard input instead (never from the command line, where `ps` and shell
    /// history would keep it).
    HashKey {
        /// Read the key to hash from standard input (one line).
        #[arg(long)]
        stdin: bool,
    },
    /// Apply the store's schema migrations (`DATABASE_URL`) and exit; the server also applies
    /// them at start.
    Migrate,
}

/// Runs `work` on the store named by the configuration (for `-t` and `migrate`).
fn with_store(
    cfg: &Config,
    work: impl AsyncFnOnce(&inference_gateway::store::Store) -> Result<(), String>,
) -> Result<(), String> {
    let Some(url) = cfg.store.database_url.as_ref() else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = inference_gateway::store::Store::connect_lazy(url.expose())?;
        let r = work(&store).await;
        store.close().await;
        r
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::HashKey { stdin }) = &cli.command {
        let key = if *stdin {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("inference-gateway: hash-key: cannot read standard input: {e}");
                return ExitCode::from(2);
            }
            let key = line.trim_end_matches(['\r', '\n']).to_string();
            if key.is_empty() {
                eprintln!("inference-gateway: hash-key --stdin: no key on standard input");
                return ExitCode::from(2);
            }
            key
        } else {
            let key = auth::new_key();
            println!("key:  {key}    (give it to the client; it is not stored anywhere)");
            key
        };
        println!("hash: {}", auth::hash_key(&key));
        println!();
        println!(
            "[[keys]]\nname = \"...\"\nhash = \"{}\"",
            auth::hash_key(&key)
        );
        return ExitCode::SUCCESS;
    }
    let cfg = match Config::load(cli.conf.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("inference-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = access_log::init_logging(&cfg) {
        eprintln!("inference-gateway: {e}");
        return ExitCode::from(2);
    }
    if let Some(url) = cfg.store.database_url.as_ref() {
        if cli.daemon && inference_gateway::store::Store::relative_sqlite(url.expose()) {
            eprintln!("inference-gateway: DATABASE_URL: a daemon needs an absolute SQLite path (sqlite:///var/lib/...), the working directory changes");
            return ExitCode::from(2);
        }
    }
    if let Some(Command::Migrate) = &cli.command {
        if cfg.store.database_url.is_none() {
            eprintln!("inference-gateway: migrate: no store configured (set DATABASE_URL)");
            return ExitCode::from(2);
        }
        return match with_store(&cfg, async |s| s.migrate().await) {
            Ok(()) => {
                println!("store migrated");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("inference-gateway: {e}");
                ExitCode::from(2)
            }
        };
    }
    if cli.test {
        if let Err(e) = prepare(&cfg) {
            eprintln!("inference-gateway: {e}");
            return ExitCode::from(2);
        }
        if let Err(e) = with_store(&cfg, async |s| s.check_writable().await) {
            eprintln!("inference-gateway: {e}");
            return ExitCode::from(2);
        }
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let launch = Launch {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        exit_when_drained: true,
    };
    match build_server(cfg, launch) {
        Ok((server, _)) => server.run_forever(),
        Err(e) => {
            eprintln!("inference-gateway: {e}");
            ExitCode::from(2)
        }
    }
}
