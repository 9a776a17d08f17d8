//! `igw`: the inference gateway's command line for people and scripts: status, models, chat
//! (one-shot or interactive), keys and usage through the admin API, a load test, and a
//! configuration check. It talks to any deployment over HTTP; nothing here links the gateway.
//!
//! Exit codes: 0 success, 1 an error answered by the gateway (its message printed), 2 bad usage,
//! 3 the gateway unreachable, timed out, or a stream broken mid-answer.

mod admin;
mod bench;
mod chat;
mod client;
mod table;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use client::{Failure, Gateway};

#[derive(Parser, Debug)]
#[command(
    name = "igw",
    version,
    about = "Command line for the inference gateway: status, chat, keys, usage and load tests",
    after_help = "Keys come from the environment only (never the command line, where ps and shell \
history keep them): IGW_API_KEY for the API, IGW_ADMIN_KEY for the admin API.\n\
Exit codes: 0 success, 1 an error answered by the gateway, 2 bad usage, 3 the gateway \
unreachable, timed out, or a stream broken mid-answer."
)]
struct Cli {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "IGW_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// How long a request may take (a stream: how long it may stay silent).
    #[arg(long, env = "IGW_TIMEOUT", default_value = "120s", value_parser = parse_duration, global = true)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Version, uptime, providers and their backends' health, MCP servers and A2A agents
    /// (`/admin/v1/health` with IGW_ADMIN_KEY, else `/health?verbose`).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The models the gateway serves (`/v1/models`).
    Models {
        /// Only this provider's models.
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Chat with a model: with a prompt or piped input, stream the answer and exit; on a
    /// terminal without one, an interactive session.
    Chat(ChatArgs),
    /// Keys through the admin API (IGW_ADMIN_KEY).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Spend and tokens: the admin API's report with IGW_ADMIN_KEY, else the calling key's
    /// `/v1/usage` with IGW_API_KEY.
    Usage(UsageArgs),
    /// A load test of a deployment: concurrent requests for a while, then RPS, latency
    /// percentiles, TTFT and errors.
    Bench(BenchArgs),
    /// Configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Model (default IGW_MODEL, else the first model `/v1/models` lists).
    #[arg(short, long, env = "IGW_MODEL")]
    pub model: Option<String>,
    /// System prompt.
    #[arg(short, long)]
    pub system: Option<String>,
    /// Print the model, TTFT, tokens and time on stderr after each answer.
    #[arg(short, long)]
    pub verbose: bool,
    /// The prompt (words are joined); without it, standard input when it is not a terminal.
    pub prompt: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key; the key itself is printed once, on standard output.
    Create(admin::CreateKey),
    /// List keys (never their secrets).
    List {
        /// Revoked keys too.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id (`key_...`) or name.
    Revoke {
        #[arg(value_name = "ID-OR-NAME")]
        key: String,
    },
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Admin report grouping: key, team, model, day or hour.
    #[arg(long, default_value = "key")]
    pub group_by: String,
    /// Admin report start (RFC 3339 time or YYYY-MM-DD, UTC; default 30 days ago).
    #[arg(long)]
    pub from: Option<String>,
    /// Admin report end (default now).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model (default IGW_MODEL, else the first model `/v1/models` lists).
    #[arg(short, long, env = "IGW_MODEL")]
    pub model: Option<String>,
    /// Requests in flight at once.
    #[arg(short, long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// How long to run (`10s`, `1m`).
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Streamed requests (measures time to first token too).
    #[arg(long)]
    pub stream: bool,
    #[arg(long, default_value = "Say hello in one short sentence.")]
    pub prompt: String,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Check a configuration file with the gateway binary beside igw (or on PATH): `-t`.
    Check { file: std::path::PathBuf },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 10s, 2m)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS provider for the process (ring, as the gateway uses).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("igw: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("igw: {f}");
            ExitCode::from(f.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Config {
        command: ConfigCommand::Check { file },
    } = &cli.command
    {
        return admin::config_check(file);
    }
    let gw = Gateway::new(&cli.url, cli.timeout)?;
    match cli.command {
        Command::Status { json } => admin::status(&gw, json).await,
        Command::Models { provider, json } => admin::models(&gw, provider.as_deref(), json).await,
        Command::Chat(args) => chat::run(&gw, args).await,
        Command::Keys { command } => match command {
            KeysCommand::Create(k) => admin::create_key(&gw, k).await,
            KeysCommand::List { all, json } => admin::list_keys(&gw, all, json).await,
            KeysCommand::Revoke { key } => admin::revoke_key(&gw, &key).await,
        },
        Command::Usage(args) => admin::usage(&gw, args).await,
        Command::Bench(args) => bench::run(&gw, args).await,
        Command::Config { .. } => unreachable!("handled above"),
    }
}
