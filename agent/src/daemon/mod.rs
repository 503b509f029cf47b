//! Fleet mode: `tasuki register` and `tasuki agent`.
//!
//! - `config.rs`: the config and credentials files.
//! - `client.rs`: the hub client (signing, retries).
//! - `catalog.rs`: the actions the robot offers the hub.
//! - `agent.rs`: the poll loop, session supervision, drain.
//! - `session.rs`: one leased session: check it, run it, ship it.
//! - `ship/`: what a session produced, on its way to the hub: the sink,
//!   the spool, the sender, crash recovery.
//! - `scratch.rs`, `checked.rs`, `workdir_lock.rs`: each session's
//!   directories made ahead, workflows already checked, one agent per work
//!   dir.
//! - `metrics.rs`: host metrics for the heartbeat.
//! - `private_fs.rs`: folders 0700 and files 0600, the agent's alone.
//! - `health.rs`: Prometheus metrics, `/healthz` and `/metrics`.
//! - the settings are read by `crate::settings`.

mod agent;
mod catalog;
mod checked;
mod client;
mod config;
mod health;
mod metrics;
mod private_fs;
mod scratch;
mod session;
mod ship;
mod workdir_lock;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tasuki_actions::ExecOptions;
use tasuki_protocol::{HostFacts, RegisterRobot};
use tokio_util::sync::CancellationToken;

pub use client::{CallError, HubClient, hub_http, plain_http_warning, read_ca_file};
use config::Registration;
pub use config::{Credentials, default_config_path, default_work_dir};

use crate::settings::{Settings, SettingsArgs, masked_url};

use crate::{EXIT_FAILED, EXIT_INVALID, EXIT_OK};

#[derive(clap::Args)]
pub struct RegisterArgs {
    /// The hub's base URL.
    #[arg(long)]
    pub url: String,
    /// Another hub of the same database, tried after --url when the hub in
    /// use stops answering (repeatable, in order; recorded as
    /// `control_plane.fallback_urls`, which is otherwise left as it is).
    #[arg(long = "fallback-url", value_name = "URL")]
    pub fallback_urls: Vec<String>,
    /// The robot's name on the hub.
    #[arg(long)]
    pub name: String,
    #[arg(long, value_name = "ID")]
    pub access_key_id: String,
    /// The secret, on the command line: visible to other users while this
    /// command runs. Prefer --secret-access-key-file.
    #[arg(long, value_name = "SECRET", conflicts_with = "secret_access_key_file")]
    pub secret_access_key: Option<String>,
    /// A file holding the secret, or `-` for standard input.
    #[arg(long, value_name = "PATH")]
    pub secret_access_key_file: Option<PathBuf>,
    /// Comma-separated labels.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    #[arg(long, default_value_t = 1)]
    pub max_concurrency: u32,
    /// Where the config goes; see `tasuki agent --help` for the default.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where the credentials go (mode 0600); beside the config by default.
    #[arg(long, value_name = "PATH")]
    pub credentials: Option<PathBuf>,
    /// Sessions' working directories and the log spool.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// A PEM file of the private CA that signed the hub's TLS certificate
    /// (recorded as `control_plane.ca_file`).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Take the name over from another machine that registered it.
    #[arg(long)]
    pub replace: bool,
    /// Give the credentials file to this account (a system install
    /// registered by root for the `tasuki` service user).
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
    /// The `iss` of the tokens the agent signs.
    #[arg(long, default_value = "tasuki")]
    pub issuer: String,
    /// The `aud` of the tokens the agent signs.
    #[arg(long, default_value = "tasuki-hub")]
    pub audience: String,
}

#[derive(clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Run one session, then exit.
    #[arg(long)]
    pub once: bool,
    /// Run under the Windows service control manager: the command line
    /// `tasuki service install` registers. Stop and shutdown drain.
    #[arg(long, hide = true)]
    pub windows_service: bool,
}

/// Logs of the short commands (`register`); the daemon's go through
/// [`crate::logging`].
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| {
            crate::log_escape::Escaping::new(std::io::stderr(), crate::log_escape::Style::Plain)
        })
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

pub fn register(args: RegisterArgs) -> u8 {
    init_tracing();
    match register_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}

fn read_secret(args: &RegisterArgs) -> anyhow::Result<SecretString> {
    let text = match (&args.secret_access_key, &args.secret_access_key_file) {
        (Some(s), _) => {
            eprintln!(
                "warning: --secret-access-key puts the secret where other users can see it \
                 (ps, shell history); prefer --secret-access-key-file"
            );
            s.clone()
        }
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the secret from standard input")?;
            s
        }
        (None, Some(p)) => std::fs::read_to_string(p)
            .with_context(|| format!("reading the secret from {}", p.display()))?,
        (None, None) => anyhow::bail!(
            "give the secret with --secret-access-key-file PATH (or `-` for standard input)"
        ),
    };
    let text = text.trim().to_string();
    if text.is_empty() {
        anyhow::bail!("the secret access key is empty");
    }
    Ok(SecretString::from(text))
}

fn register_inner(args: RegisterArgs) -> anyhow::Result<u8> {
    let secret = read_secret(&args)?;
    let config_path = args.config.clone().unwrap_or_else(default_config_path);
    let creds_path = args.credentials.clone().unwrap_or_else(|| {
        config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join("credentials.toml")
    });
    let registration = Registration {
        control_plane: crate::settings::ControlPlane {
            url: args.url.trim_end_matches('/').to_string(),
            fallback_urls: args
                .fallback_urls
                .iter()
                .map(|url| url.trim_end_matches('/').to_string())
                .collect(),
            name: args.name.clone(),
            labels: args
                .labels
                .iter()
                .filter(|l| !l.is_empty())
                .cloned()
                .collect(),
            max_concurrency: args.max_concurrency,
            issuer: args.issuer.clone(),
            audience: args.audience.clone(),
        },
        credentials_file: absolute(&creds_path),
        work_dir: args.work_dir.as_deref().map(absolute),
        ca_file: args.ca_file.as_deref().map(absolute),
    };
    // The file as it will be: what is already in it, with the
    // registration set over it.
    let (config, offered) = match registration_settings(&registration, &config_path) {
        Ok(both) => both,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_INVALID);
        }
    };
    // The same machine registering again keeps its instance id, so the
    // hub knows it for the robot it already has.
    let instance_id = Credentials::load(&creds_path)
        .ok()
        .filter(|c| c.access_key_id == args.access_key_id)
        .map(|c| c.instance_id)
        .unwrap_or_else(agent::new_id);
    let creds = Credentials {
        access_key_id: args.access_key_id.clone(),
        secret_access_key: secret,
        instance_id,
    };
    // Before the hub hears of it: a wrong --owner must not leave a robot
    // registered whose credentials nobody could use.
    if let Some(owner) = &args.owner {
        config::find_user(owner).map_err(anyhow::Error::msg)?;
    }
    let client = client::HubClient::new(&config, &creds, Arc::default())?;
    let request = RegisterRobot {
        replace: args.replace,
        ..register_request(&config, &creds, offered)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let registered = runtime.block_on(async {
        let stop = CancellationToken::new();
        // One attempt, not the daemon's endless retries: a person is
        // waiting for the answer.
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            client.register(&request, &stop),
        )
        .await
    });
    let registered = match registered {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return Ok(EXIT_FAILED);
        }
        Err(_) => {
            let hubs: Vec<String> = config
                .control_plane
                .hub_urls()
                .iter()
                .map(|url| masked_url(url))
                .collect();
            eprintln!(
                "error: no hub answered within 30 s (tried {})",
                hubs.join(", ")
            );
            return Ok(EXIT_FAILED);
        }
    };
    creds.save(&creds_path)?;
    if let Some(owner) = &args.owner {
        config::give_to(&creds_path, owner).map_err(anyhow::Error::msg)?;
    }
    config::write_registration(&config_path, &registration)?;
    warn_broad_key(&registered.key_scopes);
    crate::print_stdout(&format!(
        "registered robot `{}` (id {}) with {}\nconfig: {}\ncredentials: {} (mode 0600)\nstart it with: tasuki agent --config {}",
        registered.name,
        registered.robot_id,
        // The hub that answered: a fallback when the first did not.
        masked_url(client.base_url()),
        config_path.display(),
        creds_path.display(),
        config_path.display()
    ));
    Ok(EXIT_OK)
}

/// A robot's key lives on the robot, where a workflow might read it: any
/// scope beyond `robot` would then be the workflow author's too.
fn warn_broad_key(key_scopes: &[String]) {
    let beyond: Vec<&str> = key_scopes
        .iter()
        .map(String::as_str)
        .filter(|s| *s != "robot")
        .collect();
    if !beyond.is_empty() {
        eprintln!(
            "warning: this access key also has the scopes {}, beyond `robot`. The key is \
             stored on this machine, so a workflow that managed to read it could use those \
             scopes too. Give robots a robot-only key: tasuki-hub keys create --scopes robot",
            beyond.join(", ")
        );
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The settings the registration will leave in the config file, checked
/// as `tasuki agent` will check them: a bad name or URL is refused before
/// the hub is asked. With them, the action catalog the agent will send
/// (`catalog.rs`), so that the hub knows the robot's actions from the
/// start; the agent sends it again at every start.
fn registration_settings(
    r: &Registration,
    config_path: &Path,
) -> anyhow::Result<(Settings, Vec<tasuki_protocol::ActionOffer>)> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let draft = dir.path().join("agent.toml");
    if config_path.exists() {
        std::fs::copy(config_path, &draft)
            .with_context(|| format!("reading {}", config_path.display()))?;
    }
    config::write_registration(&draft, r)?;
    // Errors name the file the user has, not the draft.
    let named = |e: crate::settings::SettingsError| {
        anyhow::anyhow!(
            "{}",
            e.to_string().replace(
                &draft.display().to_string(),
                &config_path.display().to_string()
            )
        )
    };
    let no_env = |_: &str| None;
    let effective = crate::settings::Effective::load(&crate::settings::Sources {
        config_path: &draft,
        env: &no_env,
        flags: &[],
    })
    .map_err(named)?;
    let config = effective.settings();
    let (registry, _) = crate::packs::registry(&config.action_packs);
    let allowed = effective.allowed_actions(&registry).map_err(named)?;
    Ok((config, catalog::offers(&registry, &allowed)))
}

/// What the robot tells the hub at registration; `actions` is its
/// catalog (see `catalog.rs`).
fn register_request(
    config: &Settings,
    creds: &Credentials,
    actions: Vec<tasuki_protocol::ActionOffer>,
) -> RegisterRobot {
    RegisterRobot {
        instance_id: creds.instance_id.clone(),
        labels: config.control_plane.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        max_concurrency: config.control_plane.max_concurrency,
        host: HostFacts {
            hostname: sysinfo::System::host_name().unwrap_or_default(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        },
        replace: false,
        actions: Some(actions),
    }
}

pub fn agent(args: AgentArgs) -> u8 {
    if args.windows_service {
        return under_scm(args);
    }
    run_agent(args)
}

/// The service control manager's Stop (or the machine's shutdown) counts
/// as a first SIGTERM: a drain, bounded by `behaviour.drain_grace`.
#[cfg(windows)]
fn under_scm(args: AgentArgs) -> u8 {
    let wait_hint = match args.settings.load() {
        Ok(e) => e.settings().drain_grace + std::time::Duration::from_secs(30),
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let served =
        tasuki_installer::run_under_scm(crate::service::SERVICE_NAME, wait_hint, move |drain| {
            if let Err(e) = drain.on_stop(|_| agent::request_stop()) {
                eprintln!("error: cannot watch for the service's stop: {e}");
            }
            i32::from(run_agent(args))
        });
    match served {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

#[cfg(not(windows))]
fn under_scm(_args: AgentArgs) -> u8 {
    eprintln!("error: --windows-service is for the Windows service control manager");
    EXIT_INVALID
}

fn run_agent(args: AgentArgs) -> u8 {
    let effective = match args.settings.load() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let config = effective.settings();
    let (registry, packs) = crate::packs::registry(&config.action_packs);
    let allowed = match effective.allowed_actions(&registry) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    forbid_memory_reads();
    let _log_files = match crate::logging::init(&config) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let creds = match Credentials::load(&config.credentials_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    if creds.secret_access_key.expose_secret().is_empty() {
        eprintln!("error: the credentials hold no secret");
        return EXIT_INVALID;
    }
    for url in config.control_plane.hub_urls() {
        if let Some(warning) = plain_http_warning(&url) {
            tracing::warn!("{warning}");
        }
    }
    warn_unless_confined(&config.credentials_file);
    for problem in packs.problems.iter() {
        tracing::warn!("action pack left out: {problem}");
    }
    for pack in &packs.packs {
        tracing::info!(pack = %pack.name, version = %pack.version, dir = %pack.dir.display(), "action pack loaded");
    }
    let offered = catalog::offers(&registry, &allowed);
    let metrics = Arc::new(health::Metrics::new());
    let client = match client::HubClient::new(&config, &creds, metrics.clone()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("error: cannot set up the HTTP client: {e}");
            return EXIT_FAILED;
        }
    };
    let hubs = client.hubs();
    let work_dir = config.work_dir.clone();
    if let Err(e) = private_fs::create_dir_all(&work_dir) {
        eprintln!(
            "error: cannot create the work dir {}: {e}",
            work_dir.display()
        );
        return EXIT_FAILED;
    }
    let _work_dir_lock = match workdir_lock::lock(&work_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    // Workflows' state folders (saved cookies) outlive sessions and
    // agents; only the agent's account may read them.
    let state_root = session::state_root(&work_dir);
    if let Err(e) = private_fs::create_dir_all(&state_root) {
        eprintln!(
            "error: cannot create the state folder {}: {e}",
            state_root.display()
        );
        return EXIT_FAILED;
    }
    private_fs::tighten(&state_root);
    // What a killed agent's sessions left running ends first, before the
    // hub is reached (their records go with the sessions' directories,
    // after registration).
    let ended =
        tasuki_actions::builtin::tree_records::end_recorded_trees(&work_dir.join("sessions"));
    if ended > 0 {
        tracing::warn!(
            processes = ended,
            "ended processes that sessions of an earlier run left running"
        );
    }
    let mut options = ExecOptions {
        browser: tasuki_actions::runtime::context::BrowserSettings {
            chromium: config.chromium.clone(),
            chromedriver: config.chromedriver.clone(),
            remote_url: config.remote_webdriver.clone(),
            headless: config.headless,
            window_size: config.window_size,
            allow_file_urls: config.browser_allow_file_urls,
            unexpected_dialog: config.unexpected_dialog,
            ..Default::default()
        },
        env_allow: config.env_allow.clone(),
        cancel_grace: config.cancel_grace,
        // Steps' processes cannot read the robot's key (Landlock on
        // Linux; warned about at start where nothing enforces it). The
        // workflows' state folders are not protected so: Landlock freezes
        // the protected path's ancestors, and those of `<work>/state` (the
        // work dir, its parent, `/tmp` for a work dir there) are where
        // steps write (docs/security.md).
        protected_paths: vec![config.credentials_file.clone()],
        env_pass: config.env_pass.clone(),
        ..ExecOptions::default()
    };
    options.browser.warm = warm_browsers(&config, &options, &allowed, &work_dir);
    let warm = options.browser.warm.clone();
    metrics.set_warm(warm.clone());
    let env = Arc::new(session::SessionEnv {
        client,
        registry,
        checked: Default::default(),
        options,
        allowed_actions: allowed,
        scratch: scratch::ScratchPool::new(
            work_dir.join("spool"),
            work_dir.join("sessions"),
            config.artifacts_dir.clone(),
            config.control_plane.max_concurrency as usize,
        ),
        work_dir,
        artifacts_dir: config.artifacts_dir.clone(),
        metrics: metrics.clone(),
        robot_secret: creds.secret_access_key.clone(),
    });
    let opts = agent::AgentOptions {
        max_concurrency: config.control_plane.max_concurrency,
        once: args.once,
        register: register_request(&config, &creds, offered),
        drain_grace: config.drain_grace,
    };
    // One thread: the agent waits on the hub, on child processes and on
    // browsers, and a lease handed from the poll to its session then never
    // crosses threads (which costs more than the session's whole start on a
    // small machine). Disk work goes to the blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return EXIT_FAILED;
        }
    };
    // Paid now, not by the first session's pickup.
    if let Err(e) = tasuki_actions::runtime::context::shared_http_client() {
        tracing::warn!("{e}");
    }
    if let Some(addr) = config.metrics_listen {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "metrics.listen is not a loopback address: /healthz and /metrics can be read from the network");
        }
        let served = runtime.block_on(health::serve(
            addr,
            metrics,
            hubs,
            config.control_plane.name.clone(),
        ));
        match served {
            Ok(bound) => tracing::info!(%bound, "serving /healthz and /metrics"),
            Err(e) => {
                tracing::error!("{e:#}");
                return EXIT_FAILED;
            }
        }
    }
    let ran = runtime.block_on(async {
        let ran = agent::run(env, opts).await;
        // However the loop ended (drain, --once, displaced, an error).
        if let Some(warm) = &warm {
            warm.close().await;
        }
        ran
    });
    match ran {
        Ok(()) => EXIT_OK,
        // Logged when it happened.
        Err(e) if e.is::<agent::Displaced>() => crate::EXIT_DISPLACED,
        Err(e) => {
            tracing::error!("{e:#}");
            EXIT_FAILED
        }
    }
}

/// Where the idle warm browser's process record lives: beside the
/// sessions' private directories, so that the sweep at start
/// (`end_recorded_trees` over `sessions`) ends what a killed agent's warm
/// browser left running, and the removal of the sessions' leftovers removes
/// it.
pub fn warm_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("sessions").join("warm-browser.private")
}

/// The robot's warm browser slot, when `browser.warm` is on and there is a
/// local browser to warm that sessions may use.
fn warm_browsers(
    config: &Settings,
    options: &ExecOptions,
    allowed: &tasuki_actions::language::allowed::Allowed,
    work_dir: &Path,
) -> Option<tasuki_actions::builtin::browser::warm::WarmBrowsers> {
    if !config.browser_warm {
        return None;
    }
    if config.remote_webdriver.is_some() {
        tracing::warn!(
            "browser.warm is on, but browser.remote_webdriver is set: there is no local browser to warm"
        );
        return None;
    }
    if !allowed.allows("browser.open") {
        tracing::info!(
            "browser.warm is on, but behaviour.allowed_actions refuses the browser: no browser is warmed"
        );
        return None;
    }
    Some(tasuki_actions::builtin::browser::warm::WarmBrowsers::new(
        options.browser.clone(),
        options.clone(),
        warm_dir(work_dir),
        |note| {
            if note.warning {
                tracing::warn!("{}", note.message);
            } else {
                tracing::info!("{}", note.message);
            }
        },
    ))
}

/// Linux: makes the agent non-dumpable before it reads its credentials, so
/// that processes of the same user (a step's shell among them) cannot read
/// its memory or environment through `/proc/<pid>/mem`, `environ` or
/// ptrace; root still can. It also means the agent leaves no core dump.
/// Elsewhere there is no such switch: the credentials file's mode and the
/// masking are what protect the secret.
fn forbid_memory_reads() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("warning: cannot make the agent non-dumpable (PR_SET_DUMPABLE): {e}");
    }
}

/// Says, once, when nothing keeps the processes that steps start from
/// reading the credentials file.
fn warn_unless_confined(credentials: &Path) {
    use tasuki_actions::builtin::confine::{Support, support};
    // Landlock hides a path, not a file: another hard link to the same
    // file stays readable.
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(credentials) {
        use std::os::unix::fs::MetadataExt;
        if meta.nlink() > 1 {
            tracing::warn!(
                credentials = %credentials.display(),
                links = meta.nlink(),
                "the credentials file has other hard links, which steps can read; remove them"
            );
        }
    }
    match support() {
        Support::Landlock { abi } => {
            tracing::info!(abi, credentials = %credentials.display(), "steps cannot read the credentials (Landlock)")
        }
        Support::Unavailable(why) => tracing::warn!(
            credentials = %credentials.display(),
            "the processes that steps start can read the credentials file: {why}. Run the agent under an account of its own, refuse shell.* and browser.* in behaviour.allowed_actions, or use a Linux kernel with Landlock (5.13 or later)"
        ),
    }
}
