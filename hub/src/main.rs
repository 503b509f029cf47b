//! `tasuki-hub`: the reference control plane for Tasuki robots. Its public
//! API follows the AUTORO REST API; see hub/README.md.

mod api;
mod console;
mod copy;
mod db;
mod dispatch;
mod head_watch;
mod keys;
mod listener;
mod log_escape;
mod metrics;
mod notify;
mod peer_limit;
mod peers;
mod robots;
mod routing;
mod schedule;
mod secrets;
mod serve;
mod signature;
mod store;
mod tls;
mod workflows;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "tasuki-hub",
    version,
    about = "The reference control plane for Tasuki robots"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; `serve`'s many options make it the large one.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the API.
    Serve {
        #[arg(long, env = "TASUKI_HUB_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        store: store::StoreArgs,
        /// The `iss` every token must carry [default: tasuki, or
        /// console.autoro.io with --autoro-compat].
        #[arg(long, env = "TASUKI_HUB_ISSUER")]
        issuer: Option<String>,
        /// The `aud` every token must carry [default: tasuki-hub, or
        /// https://api.autoro.io/ with --autoro-compat].
        #[arg(long, env = "TASUKI_HUB_AUDIENCE")]
        audience: Option<String>,
        /// Take the AUTORO document's examples as written: tokens of its
        /// `iss` and `aud` (unless --issuer or --audience say otherwise),
        /// and an `Authorization` token wrapped over lines by GNU base64
        /// joined rather than refused (hub/README.md, "AUTORO-compatible
        /// mode").
        #[arg(long, env = "TASUKI_HUB_AUTORO_COMPAT")]
        autoro_compat: bool,
        /// Public API calls a minute each access key may make, per
        /// registered robot (AUTORO's rule is 60; never less than 60).
        #[arg(long, env = "TASUKI_HUB_QUOTA_PER_ROBOT", default_value_t = 60,
              value_parser = clap::value_parser!(u64).range(60..))]
        quota_per_robot: u64,
        /// Robots one access key may register (each raises its quota).
        #[arg(long, env = "TASUKI_HUB_MAX_ROBOTS_PER_KEY",
              default_value_t = api::DEFAULT_MAX_ROBOTS_PER_KEY,
              value_parser = clap::value_parser!(u64).range(1..))]
        max_robots_per_key: u64,
        /// How long a robot's poll is held when there is nothing to say;
        /// at most 25 s, since agents give up on a poll after 35 s.
        #[arg(long, env = "TASUKI_HUB_HOLD_SECONDS", default_value_t = 25,
              value_parser = clap::value_parser!(u64).range(1..=25))]
        hold_seconds: u64,
        /// How long a running session's lease lives without a renewal
        /// before the session ends as `robot_lost`; at least the hold + 5 s.
        #[arg(long, env = "TASUKI_HUB_LEASE_TTL_SECONDS", default_value_t = 60,
              value_parser = clap::value_parser!(u64).range(6..=3600))]
        lease_ttl_seconds: u64,
        /// How late a schedule's run may be (the hubs were down) and still
        /// count as on time; a later one follows the schedule's `missed`
        /// policy.
        #[arg(long, env = "TASUKI_HUB_SCHEDULE_MISSED_AFTER_SECONDS",
              default_value_t = schedule::MISSED_AFTER.as_secs(),
              value_parser = clap::value_parser!(u64).range(1..=86_400))]
        schedule_missed_after_seconds: u64,
        /// Serve Prometheus metrics at /metrics on this address (off unless
        /// given; a loopback or private address: they name workflows).
        #[arg(long, env = "TASUKI_HUB_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Let notifications go to loopback, private and link-local
        /// addresses (refused otherwise: a key holder must not make the hub
        /// a client of what only its network reaches).
        #[arg(long, env = "TASUKI_HUB_NOTIFY_PRIVATE_ADDRESSES")]
        notify_private_addresses: bool,
        /// Do not serve the web console at /ui (served by default).
        #[arg(long, env = "TASUKI_HUB_NO_CONSOLE")]
        no_console: bool,
        #[command(flatten)]
        edge: EdgeArgs,
        #[command(flatten)]
        session_limits: SessionLimitArgs,
    },
    /// Manage access keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage registered robots: a robot moves to another access key only
    /// through `robots transfer`.
    Robots {
        #[command(subcommand)]
        command: RobotsCommand,
    },
    /// Manage workflow names: a name belongs to the access key that first
    /// registered it, and moves to another only through `workflows
    /// transfer`.
    Workflows {
        #[command(subcommand)]
        command: WorkflowsCommand,
    },
    /// Copy a hub's SQLite database into an empty PostgreSQL database, to
    /// move the hub there. Stop the hub first: the source must not be
    /// served while it is copied.
    ///
    /// Every table is copied as it is, ids included, in one transaction on
    /// the target, committed only if every table's count then matches the
    /// source's. A process that has the source open (a hub still serving
    /// it) is found and refused, and while the copy runs no other process
    /// can open the file. A target that holds any row is refused. Secrets
    /// are copied sealed: start the hubs of the new database with
    /// `--master-key` naming the SQLite hub's key file (`<from>.key`).
    Migrate {
        /// The SQLite database to copy: its file, or `sqlite:PATH`.
        #[arg(long)]
        from: db::Location,
        /// The source's master key file, if not `<from>.key`.
        #[arg(long)]
        master_key: Option<PathBuf>,
        /// The PostgreSQL database to copy into (`postgres://user@host/db`);
        /// it must hold no rows. Its schema is made here if it has none.
        #[arg(long)]
        to: db::Location,
        /// A file (mode 0600) that holds the password of --to.
        #[arg(long)]
        to_password_file: Option<PathBuf>,
        /// The CA of --to's TLS certificate, as `serve --db-ca-file`.
        #[arg(long)]
        to_ca_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum WorkflowsCommand {
    /// Give a workflow name to another access key (which needs the
    /// `workflow.write` scope): only it may register newer workflows of
    /// that name, which the name's `call` steps run.
    Transfer {
        name: String,
        /// The access key id that will own the name.
        #[arg(long)]
        to_key: String,
        #[command(flatten)]
        store: store::StoreArgs,
    },
}

#[derive(Subcommand)]
enum RobotsCommand {
    /// List robots with the key that owns each, as JSON.
    List {
        #[command(flatten)]
        store: store::StoreArgs,
    },
    /// Give a robot to another access key (which needs the `robot` scope);
    /// the old key's agent is refused from then on.
    Transfer {
        name: String,
        /// The access key id that will own the robot.
        #[arg(long)]
        to_key: String,
        #[command(flatten)]
        store: store::StoreArgs,
    },
    /// Delete a robot; refused while it holds a lease on a session.
    Delete {
        name: String,
        #[command(flatten)]
        store: store::StoreArgs,
    },
}

/// The network edge: what a client may hold open or try, and TLS.
#[derive(clap::Args)]
struct EdgeArgs {
    /// Open connections at most; past it, new connections wait in the
    /// listen backlog until one closes. Each waiting robot holds one for
    /// its long poll: keep it well above the number of robots.
    #[arg(long, env = "TASUKI_HUB_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Open connections from one client address at most (an IPv6 /64
    /// counts as one address); past it, its new connections are closed.
    /// Loopback counts too: behind a reverse proxy, raise it or set 0 (no
    /// cap).
    #[arg(long, env = "TASUKI_HUB_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    max_connections_per_address: u64,
    /// Seconds a request body may take to arrive, plus one for every
    /// 16 KiB of it (so a large upload at a reasonable speed is never cut).
    #[arg(long, env = "TASUKI_HUB_BODY_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    body_timeout_seconds: u64,
    /// Seconds a connection may take to send a complete request head,
    /// and may stay idle between requests; also bounds a TLS handshake.
    #[arg(long, env = "TASUKI_HUB_HEADER_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    header_timeout_seconds: u64,
    /// Failed authentications a minute from one source address before it
    /// gets 429; 0 turns the limit off (behind a reverse proxy every caller
    /// is the proxy's address). A key that authenticated from an address
    /// is let through from it for ten minutes whatever the count.
    #[arg(long, env = "TASUKI_HUB_AUTH_FAILURES_PER_SOURCE", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(0..))]
    auth_failures_per_source: u32,
    /// Failed authentications a minute naming one access key id before
    /// sources that fail with it get 429; 0 turns the limit off.
    #[arg(long, env = "TASUKI_HUB_AUTH_FAILURES_PER_KEY", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(0..))]
    auth_failures_per_key: u32,
    /// PEM certificate chain: serve HTTPS (with --tls-key). Reloaded, with
    /// the key, on SIGHUP.
    #[arg(long, env = "TASUKI_HUB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "TASUKI_HUB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// How much one session may store (hub/README.md, "Limits").
#[derive(clap::Args)]
struct SessionLimitArgs {
    /// Artifacts one session may store.
    #[arg(long, env = "TASUKI_HUB_MAX_SESSION_ARTIFACTS", default_value_t = 1000)]
    max_session_artifacts: u64,
    /// Total bytes of one session's artifacts.
    #[arg(long, env = "TASUKI_HUB_MAX_SESSION_ARTIFACT_BYTES", default_value_t = 200 * 1024 * 1024)]
    max_session_artifact_bytes: u64,
    /// Log lines one session may store.
    #[arg(
        long,
        env = "TASUKI_HUB_MAX_SESSION_LOG_LINES",
        default_value_t = 1_000_000
    )]
    max_session_log_lines: u64,
    /// Total bytes of one session's log messages.
    #[arg(long, env = "TASUKI_HUB_MAX_SESSION_LOG_BYTES", default_value_t = 1024 * 1024 * 1024)]
    max_session_log_bytes: u64,
    /// How long one run of a session may last on its robot (such as `8h`);
    /// past it the hub cancels it and it ends `session_duration_limit`.
    /// Time a session spends waiting (approvals, events) does not count.
    /// No limit unless set.
    #[arg(long, env = "TASUKI_HUB_MAX_SESSION_DURATION", value_parser = parse_duration_arg)]
    max_session_duration: Option<std::time::Duration>,
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    tasuki_actions::language::duration::parse_duration(text).and_then(|d| {
        if d.is_zero() {
            Err("must be more than 0s".into())
        } else {
            Ok(d)
        }
    })
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an access key; prints {access_key_id, secret_access_key} once.
    Create {
        /// Space-separated: session_queue.write session_queue.read
        /// session_queue.delete access_token.create workflow.write robot
        /// audit.read credential.read credential.write
        #[arg(long)]
        scopes: String,
        /// The only labels the key's robots may carry, space- or
        /// comma-separated ("" for none); any when left out. A credential
        /// allowed by a label reaches robots of any key that may give it.
        #[arg(long)]
        robot_labels: Option<String>,
        #[command(flatten)]
        store: store::StoreArgs,
    },
    /// List access keys (never their secrets).
    List {
        #[command(flatten)]
        store: store::StoreArgs,
    },
    /// Delete an access key; every token signed with it stops working.
    Delete {
        access_key_id: String,
        #[command(flatten)]
        store: store::StoreArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. });
    init_tracing(if serving { "info" } else { "warn" });
    let result = match cli.command {
        Command::Serve {
            listen,
            store,
            issuer,
            audience,
            autoro_compat,
            quota_per_robot,
            max_robots_per_key,
            hold_seconds,
            lease_ttl_seconds,
            schedule_missed_after_seconds,
            metrics_listen,
            notify_private_addresses,
            no_console,
            edge,
            session_limits,
        } => run(serve::serve(serve::ServeOptions {
            listen,
            store,
            issuer: issuer.unwrap_or_else(|| token_default(autoro_compat, "tasuki", AUTORO_ISSUER)),
            audience: audience
                .unwrap_or_else(|| token_default(autoro_compat, "tasuki-hub", AUTORO_AUDIENCE)),
            quota_per_robot,
            max_robots_per_key,
            timings: api::Timings {
                hold_seconds,
                lease_ttl_seconds,
            },
            schedule_missed_after: std::time::Duration::from_secs(schedule_missed_after_seconds),
            metrics_listen,
            notify_private_addresses,
            autoro_compat,
            console: !no_console,
            edge: listener::EdgeLimits {
                max_connections: edge.max_connections as usize,
                header_timeout: std::time::Duration::from_secs(edge.header_timeout_seconds),
                max_per_address: edge.max_connections_per_address as usize,
                wrapped_headers: if autoro_compat {
                    head_watch::Mode::Join
                } else {
                    head_watch::Mode::Explain
                },
            },
            body_timeout: std::time::Duration::from_secs(edge.body_timeout_seconds),
            auth_failures: api::FailureLimits {
                per_source: edge.auth_failures_per_source,
                per_key: edge.auth_failures_per_key,
            },
            session_limits: api::SessionLimits {
                artifacts: session_limits.max_session_artifacts,
                artifact_bytes: session_limits.max_session_artifact_bytes,
                log_lines: session_limits.max_session_log_lines,
                log_bytes: session_limits.max_session_log_bytes,
                duration: session_limits.max_session_duration,
            },
            tls: edge
                .tls_cert
                .zip(edge.tls_key)
                .map(|(cert, key)| tls::TlsFiles { cert, key }),
        })),
        Command::Keys { command } => match command {
            KeysCommand::Create {
                scopes,
                robot_labels,
                store,
            } => run(keys::create(&store, &scopes, robot_labels.as_deref())),
            KeysCommand::List { store } => run(keys::list(&store)),
            KeysCommand::Delete {
                access_key_id,
                store,
            } => run(keys::delete(&store, &access_key_id)),
        },
        Command::Robots { command } => match command {
            RobotsCommand::List { store } => run(robots::list(&store)),
            RobotsCommand::Transfer {
                name,
                to_key,
                store,
            } => run(robots::transfer(&store, &name, &to_key)),
            RobotsCommand::Delete { name, store } => run(robots::delete(&store, &name)),
        },
        Command::Workflows { command } => match command {
            WorkflowsCommand::Transfer {
                name,
                to_key,
                store,
            } => run(workflows::transfer(&store, &name, &to_key)),
        },
        Command::Migrate {
            from,
            master_key,
            to,
            to_password_file,
            to_ca_file,
        } => {
            let source = store::StoreArgs {
                db: from,
                master_key,
                db_password_file: None,
                db_ca_file: None,
            };
            run(copy::migrate(
                &source,
                &to,
                to_password_file.as_deref(),
                to_ca_file.as_deref(),
            ))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tasuki-hub: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `iss` and `aud` the AUTORO document's tokens carry.
const AUTORO_ISSUER: &str = "console.autoro.io";
const AUTORO_AUDIENCE: &str = "https://api.autoro.io/";

/// A token claim's expected value when no flag gives it: the AUTORO
/// document's in its compatible mode, Tasuki's own otherwise.
fn token_default(autoro_compat: bool, tasuki: &str, autoro: &str) -> String {
    if autoro_compat { autoro } else { tasuki }.to_string()
}

/// Every command runs on one multi-threaded runtime: the database is
/// reached through it (`db::Db::call`), from a server or a one-shot command.
fn run(command: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(command)
}

/// Logs go to stderr (stdout carries the `listening on` line and the
/// commands' JSON), coloured only on a terminal. RUST_LOG overrides the
/// level. Field values carry callers' text (workflow and robot names,
/// paths, errors): control and bidi characters in them are escaped.
fn init_tracing(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(log_escape::escaping_fields())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
