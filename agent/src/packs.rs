//! Action packs on this machine (docs/action-packs.md): the registry that
//! `tasuki run` and the robot use (built-ins plus packs), and the
//! `tasuki packs list` and `tasuki packs check` commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tasuki_actions::packs::{self, Found, Manifest};
use tasuki_actions::{ExecOptions, Registry};

use crate::settings::SettingsArgs;
use crate::{EXIT_FAILED, EXIT_INVALID, EXIT_OK};

/// `--packs DIR`, for the commands that load workflows.
#[derive(clap::Args, Clone, Default)]
pub struct PackDirs {
    /// A folder of action packs, or one pack's folder (repeatable). Adds to
    /// the default folders (`tasuki packs list` shows them).
    #[arg(long = "packs", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

impl PackDirs {
    /// The default folders, then those given: the registry of `tasuki run`.
    pub fn registry(&self) -> Registry {
        let config = crate::daemon::default_config_path();
        let mut dirs = default_dirs(config.parent().unwrap_or(Path::new(".")));
        dirs.extend(self.dirs.iter().cloned());
        let (registry, found) = registry(&dirs);
        warn_problems(&found);
        registry
    }
}

/// Where packs are looked for unless `paths.action_packs` says otherwise:
/// beside the config file, and where packages install them (as root) or
/// in the user's data folder.
pub fn default_dirs(config_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![config_dir.join("packs")];
    let data = crate::daemon::default_work_dir();
    if cfg!(unix) && data == Path::new("/var/lib/tasuki") {
        dirs.push(PathBuf::from("/usr/lib/tasuki/packs"));
    } else if !cfg!(windows) {
        dirs.push(data.join("packs"));
    }
    dirs
}

/// The built-in actions and the packs found in `dirs`. A pack that does
/// not load is in `Found::problems` and leaves out only itself.
pub fn registry(dirs: &[PathBuf]) -> (Registry, Found) {
    let found = packs::discover(dirs);
    let mut registry = Registry::builtin();
    for pack in &found.packs {
        registry.register_pack(pack);
    }
    (registry, found)
}

fn warn_problems(found: &Found) {
    for problem in found.problems.iter() {
        eprintln!("warning: action pack left out: {problem}");
    }
}

#[derive(clap::Subcommand)]
pub enum PacksCommand {
    /// List the packs a robot here loads (`paths.action_packs`, and
    /// `--packs`), their actions, and what is wrong with those that do not load.
    List {
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        packs: PackDirs,
    },
    /// Check a pack as its author: the manifest and schemas, then start
    /// it, run its `self_test` requests, and shut it down.
    Check {
        /// The pack's folder (the one holding tasuki-pack.yaml).
        dir: PathBuf,
    },
}

pub fn run(command: PacksCommand) -> u8 {
    match command {
        PacksCommand::List { settings, packs } => list(&settings, &packs),
        PacksCommand::Check { dir } => check(&dir),
    }
}

/// The folders a robot configured by `settings` loads packs from.
fn configured_dirs(settings: &SettingsArgs) -> Result<Vec<PathBuf>, String> {
    let config = settings.config_path();
    if !config.exists() {
        return Ok(default_dirs(config.parent().unwrap_or(Path::new("."))));
    }
    settings
        .load()
        .map(|effective| effective.settings().action_packs)
        .map_err(|e| e.to_string())
}

fn list(settings: &SettingsArgs, extra: &PackDirs) -> u8 {
    let mut dirs = match configured_dirs(settings) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    dirs.extend(extra.dirs.iter().cloned());
    let found = packs::discover(&dirs);
    crate::print_stdout(&format!(
        "pack folders: {}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if found.packs.is_empty() {
        crate::print_stdout("no action packs found");
    }
    for pack in &found.packs {
        crate::print_stdout(&describe(pack));
    }
    if found.problems.is_empty() {
        EXIT_OK
    } else {
        eprintln!("{}", found.problems);
        eprintln!("(each problem leaves out only its own pack)");
        EXIT_INVALID
    }
}

fn describe(pack: &Manifest) -> String {
    let mut out = format!(
        "{} {} ({}){}",
        pack.name,
        pack.version,
        pack.dir.display(),
        pack.description
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default()
    );
    for (name, spec) in &pack.actions {
        out.push_str(&format!(
            "\n  {}.{name}{}",
            pack.name,
            spec.description
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ));
    }
    out
}

fn check(dir: &Path) -> u8 {
    let manifest = match packs::manifest::load(dir) {
        Ok(m) => Arc::new(m),
        Err(problems) => {
            eprintln!("{problems}");
            return EXIT_INVALID;
        }
    };
    crate::print_stdout(&format!(
        "manifest ok: {}",
        describe(&manifest).replace('\n', "\n  ")
    ));
    let scratch = match tempfile::Builder::new()
        .prefix("tasuki-pack-check-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot make a scratch work folder: {e}");
            return EXIT_FAILED;
        }
    };
    let options = ExecOptions {
        session_id: "pack-check".into(),
        work_dir: scratch.path().to_path_buf(),
        artifacts_dir: scratch.path().join("artifacts"),
        ..ExecOptions::default()
    };
    let Some(runtime) = crate::local_run::runtime() else {
        return EXIT_FAILED;
    };
    let display = Arc::new(crate::display::Display::new(
        crate::display::Target::Stdout,
        0,
    ));
    let report = runtime.block_on(packs::check(manifest.clone(), options, display));
    match &report.start {
        Ok(took) => crate::print_stdout(&format!("started: `ready` after {} ms", took.as_millis())),
        Err(e) => crate::print_stdout(&format!("did not start: {}: {}", e.code, e.message)),
    }
    if manifest.self_test.is_empty() && report.start.is_ok() {
        crate::print_stdout("no self_test in the manifest: only start and shutdown were checked");
    }
    for request in &report.requests {
        match &request.result {
            Ok(output) => crate::print_stdout(&format!(
                "{}: ok in {} ms: {output}",
                request.action,
                request.took.as_millis()
            )),
            Err(e) => crate::print_stdout(&format!(
                "{}: failed in {} ms: {}: {}",
                request.action,
                request.took.as_millis(),
                e.code,
                e.message
            )),
        }
    }
    if report.start.is_ok() {
        crate::print_stdout(if report.clean_shutdown {
            "shutdown: exited with code 0"
        } else {
            "shutdown: did not exit with code 0 within 5 s of `shutdown` (it was ended)"
        });
    }
    if report.passed() {
        crate::print_stdout("pack check passed");
        EXIT_OK
    } else {
        crate::print_stdout("pack check failed");
        EXIT_FAILED
    }
}
