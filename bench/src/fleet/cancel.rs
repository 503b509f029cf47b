//! `cancel`: from `DELETE /v1/session_queues/{id}/cancel` returning to the
//! running shell step's process tree being gone and the hub saying
//! `cancelled`.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use crate::Opts;
use crate::api::Api;
use crate::procs::{Bins, Stage, alive, kill};
use crate::stats::{Dist, ms};

const YAML: &str = r#"version: 1
name: cancel-bench
params:
  file: ""
steps:
  - id: work
    action: shell.run
    with:
      shell: sh
      script: |
        sleep 300 &
        echo "$$ $!" > "${params.file}"
        wait
"#;

/// How long after the hub says `cancelled` a process may live before it is
/// an orphan.
const ORPHAN_AFTER: Duration = Duration::from_secs(2);
/// The watchers give up after this long.
const WATCH_LIMIT: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_micros(200);

/// Kills the step's processes that are still alive when dropped, so that a
/// failed run leaves no `sleep 300` behind.
#[derive(Default)]
struct PidGuard(Vec<u32>);

impl Drop for PidGuard {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                kill(pid);
            }
        }
    }
}

async fn read_pids(file: &Path, limit: Duration) -> Result<(u32, u32)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && text.ends_with('\n')
        {
            let mut it = text.split_whitespace().map(str::parse::<u32>);
            return match (it.next(), it.next()) {
                (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
                _ => bail!("{} does not hold two pids: {text:?}", file.display()),
            };
        }
        if Instant::now() > deadline {
            bail!("{} was not written within {limit:?}", file.display());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// When each of the two pids was first seen dead.
type Deaths = (Option<Instant>, Option<Instant>);

/// Waits for the start instant, then until both pids are dead.
fn watch_pids(pids: (u32, u32), start: mpsc::Receiver<Instant>) -> JoinHandle<Deaths> {
    std::thread::spawn(move || {
        let mut dead: Deaths = (None, None);
        let Ok(from) = start.recv() else {
            return dead;
        };
        loop {
            let now = Instant::now();
            if dead.0.is_none() && !alive(pids.0) {
                dead.0 = Some(now);
            }
            if dead.1.is_none() && !alive(pids.1) {
                dead.1 = Some(now);
            }
            if (dead.0.is_some() && dead.1.is_some()) || now - from > WATCH_LIMIT {
                return dead;
            }
            std::thread::sleep(TICK);
        }
    })
}

type HubWatch = JoinHandle<std::result::Result<Option<Instant>, String>>;

/// A thread with a connection of its own: tells `ready` once connected,
/// waits for the start instant, then GETs the session until `cancelled`.
fn watch_hub(
    api: Api,
    id: i64,
    ready: mpsc::Sender<()>,
    start: mpsc::Receiver<Instant>,
) -> HubWatch {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime for the hub watcher: {e}"))?;
        rt.block_on(async move {
            let api = api.fresh().map_err(|e| format!("{e:#}"))?;
            // Opens the connection, so the first timed GET does not.
            api.status(id).await.map_err(|e| format!("{e:#}"))?;
            let _ = ready.send(());
            let Ok(from) = start.recv() else {
                return Ok(None);
            };
            loop {
                let status = api.status(id).await.map_err(|e| format!("{e:#}"))?;
                let now = Instant::now();
                match status.as_str() {
                    "cancelled" => return Ok(Some(now)),
                    "success" | "error" => {
                        return Err(format!("session {id} ended {status}, not cancelled"));
                    }
                    _ => {}
                }
                if now - from > WATCH_LIMIT {
                    return Ok(None);
                }
                std::thread::sleep(TICK);
            }
        })
    })
}

async fn join<T: Send + 'static>(h: JoinHandle<T>) -> Result<T> {
    tokio::task::spawn_blocking(move || h.join())
        .await
        .context("join a watcher")?
        .map_err(|_| anyhow!("a watcher thread panicked"))
}

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let stage = Stage::new(bins, "cancel", opts.keep)?;
    // Steps may not add entries to the folders above the robot's
    // credentials (Landlock; docs/security.md), and the stage's folder is
    // one of them: the pid files go in a folder of their own.
    let pids_dir = stage.dir.join("pids");
    std::fs::create_dir_all(&pids_dir).context("create the pid files' folder")?;
    let agent = stage.agent("cancel-1", 1).await?;
    let wf = stage.workflow(YAML).await?;
    let mut guard = PidGuard::default();
    let (mut shell_d, mut child_d) = (Dist::default(), Dist::default());
    let (mut procs_d, mut hub_d, mut both_d) = (Dist::default(), Dist::default(), Dist::default());
    let (mut orphans, mut timeouts) = (0usize, 0usize);
    let mut notes: Vec<String> = Vec::new();
    for rep in 0..opts.reps {
        let file = pids_dir.join(format!("pids-{rep}.txt"));
        let id = stage
            .api
            .queue(wf, json!({ "file": file.display().to_string() }))
            .await?;
        let pids = read_pids(&file, Duration::from_secs(30))
            .await
            .with_context(|| format!("session {id}"))?;
        guard.0.extend([pids.0, pids.1]);
        let (ptx, prx) = mpsc::channel();
        let (htx, hrx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let pw = watch_pids(pids, prx);
        let hw = watch_hub(stage.api.clone(), id, ready_tx, hrx);
        tokio::task::spawn_blocking(move || ready_rx.recv_timeout(Duration::from_secs(10)))
            .await
            .context("wait for the hub watcher")?
            .context("the hub watcher did not connect")?;
        stage
            .api
            .delete(&format!("/v1/session_queues/{id}/cancel"))
            .await?;
        let deleted = Instant::now();
        let _ = ptx.send(deleted);
        let _ = htx.send(deleted);
        let deaths = join(pw).await?;
        let cancelled_at = join(hw).await?.map_err(|e| anyhow!(e))?;
        if let Some(d) = deaths.0 {
            shell_d.push(d - deleted);
        }
        if let Some(d) = deaths.1 {
            child_d.push(d - deleted);
        }
        let dead_at = deaths.0.zip(deaths.1).map(|(a, b)| a.max(b));
        match (dead_at, cancelled_at) {
            (Some(d), Some(c)) => {
                procs_d.push(d - deleted);
                hub_d.push(c - deleted);
                both_d.push(d.max(c) - deleted);
            }
            (d, c) => {
                timeouts += 1;
                notes.push(format!(
                    "rep {rep} (session {id}): {} within {WATCH_LIMIT:?}",
                    match (d, c) {
                        (None, None) => "processes alive and hub not `cancelled`",
                        (None, _) => "processes still alive",
                        _ => "hub not `cancelled`",
                    }
                ));
            }
        }
        // Orphans: processes still alive well after the hub called the
        // session over (or after the watch gave up).
        let check_at = cancelled_at.unwrap_or_else(Instant::now) + ORPHAN_AFTER;
        tokio::time::sleep(check_at.saturating_duration_since(Instant::now())).await;
        for pid in [pids.0, pids.1] {
            if alive(pid) {
                orphans += 1;
                notes.push(format!(
                    "rep {rep} (session {id}): pid {pid} alive {ORPHAN_AFTER:?} after the session \
                     was cancelled; killed"
                ));
                kill(pid);
            }
        }
        eprintln!(
            "[cancel] {}/{}: processes {} hub {}",
            rep + 1,
            opts.reps,
            dead_at.map_or("timeout".into(), |d| ms((d - deleted).as_secs_f64() * 1e3)),
            cancelled_at.map_or("timeout".into(), |c| ms((c - deleted).as_secs_f64() * 1e3)),
        );
    }
    let mut out = String::new();
    writeln!(out, "## cancel\n")?;
    writeln!(
        out,
        "One agent; a `shell.run` step runs `sleep 300 &` and waits. {} reps: from `DELETE \
         …/cancel` returning, the shell and its grandchild are polled every 200 µs (a zombie \
         counts as dead) and `GET /v1/session_queues/{{id}}` on its own connection until \
         `cancelled`.\n",
        opts.reps
    )?;
    writeln!(out, "| from DELETE returning to | p50 | p99 | max |")?;
    writeln!(out, "|---|---|---|---|")?;
    for (label, d) in [
        ("the shell (`$$`) dead", &mut shell_d),
        ("its grandchild (`sleep 300 &`) dead", &mut child_d),
        ("both processes dead", &mut procs_d),
        ("hub says `cancelled`", &mut hub_d),
        ("**both** (the max)", &mut both_d),
    ] {
        writeln!(
            out,
            "| {label} | {} | {} | {} |",
            ms(d.pct(50.0)),
            ms(d.pct(99.0)),
            ms(d.max())
        )?;
    }
    writeln!(
        out,
        "\nOrphans (a pid alive {ORPHAN_AFTER:?} after the hub said `cancelled`): **{orphans}**; \
         reps that timed out ({WATCH_LIMIT:?}): {timeouts}.\n"
    )?;
    for n in notes.iter().take(10) {
        writeln!(out, "- {n}")?;
    }
    out.push_str(&stage.problems_report(&[&agent]));
    drop(agent);
    drop(guard);
    Ok(out)
}
