//! One leased session on this robot: check it, run it through the action
//! runtime, and ship everything it produced. The lease needs no separate
//! acknowledgement: the poll it answered offered the free slot, and the
//! next poll lists it as held.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use tasuki_actions::language::allowed::Allowed;
use tasuki_actions::language::calls::{self, Calls, Sources};
use tasuki_actions::language::credentials::bind_credentials;
use tasuki_actions::language::params::{BoundParams, ParamInputs, bind_params};
use tasuki_actions::runtime::executor::Start;
use tasuki_actions::runtime::wait::{Resume, SuspendingWaiter};
use tasuki_actions::{ExecOptions, Executor, LoadOptions, Registry, parse_workflow};
use tasuki_protocol::robot::Resumption;
use tasuki_protocol::{HeldLease, Lease};
use tokio_util::sync::CancellationToken;

use super::checked::CheckedWorkflows;
use super::client::{CallError, HubClient};
use super::health::Metrics;
use super::scratch::ScratchPool;
use super::ship::{self, Shipped, SlotFreed, Source, Spool, SpoolSink};

/// How long after a session's start its spool's lease is recorded and the
/// next session's directories are made.
const BACKGROUND_DISK_WORK_AFTER: std::time::Duration = std::time::Duration::from_millis(2);

/// How often a session's spool is flushed to disk at the latest.
const SPOOL_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// What every session on this robot shares.
pub struct SessionEnv {
    pub client: Arc<HubClient>,
    pub registry: Registry,
    pub checked: CheckedWorkflows,
    /// Each session's directories, made ahead.
    pub scratch: Arc<ScratchPool>,
    /// The action families this robot runs; a session using another one
    /// fails validation before any step runs.
    pub allowed_actions: Allowed,
    pub work_dir: PathBuf,
    /// Each session writes into its own directory under this.
    pub artifacts_dir: PathBuf,
    pub options: ExecOptions,
    pub metrics: Arc<Metrics>,
    /// The robot's own secret access key: masked in everything a session
    /// produces, like a secret param, should a step get hold of it.
    pub robot_secret: SecretString,
}

impl SessionEnv {
    pub fn spool_root(&self) -> PathBuf {
        self.work_dir.join("spool")
    }

    /// Where sessions' work directories are made.
    pub fn sessions_root(&self) -> PathBuf {
        self.work_dir.join("sessions")
    }

    /// A workflow's state folder (`ExecOptions::state_dir`): what its
    /// sessions keep for its later ones, such as saved cookies; its
    /// sessions' actions reach no other workflow's. Made 0700 when an
    /// action first writes there.
    pub fn state_dir(&self, workflow_id: i64) -> PathBuf {
        state_root(&self.work_dir).join(workflow_id.to_string())
    }
}

/// `<work dir>/state`: the workflows' state folders, which outlive
/// sessions (the agent makes it 0700 at start).
pub fn state_root(work_dir: &std::path::Path) -> PathBuf {
    work_dir.join("state")
}

/// Runs a leased session to its end: checks it, runs it, and ships what
/// it produced (`ship/`). `cancel` is the session's own token (the hub
/// asked, or the agent is stopping hard); `stop` interrupts shipping when
/// the agent exits without waiting; `slot_freed` is set once the final
/// report is on its way.
pub async fn run(
    env: Arc<SessionEnv>,
    lease: Lease,
    cancel: CancellationToken,
    stop: CancellationToken,
    slot_freed: SlotFreed,
) -> Shipped {
    let received = Instant::now();
    let prepared = prepare(&env, &lease);
    env.metrics
        .pickup_seconds
        .observe(super::health::seconds_since(received));
    tracing::info!(session_queue_id = lease.session_id, workflow = %lease.workflow.name, "session started");
    let held = HeldLease {
        session_id: lease.session_id,
        lease_id: lease.lease_id,
    };
    match prepared {
        Ok(checked) => {
            let state_dir = env.state_dir(lease.workflow.id);
            run_checked(&env, held, checked, state_dir, cancel, stop, slot_freed).await
        }
        Err((code, message)) => {
            let report = ship::failed_before_start(&held, code, message);
            let created = {
                let (root, held, slot_freed) = (env.spool_root(), held.clone(), slot_freed.clone());
                tokio::task::spawn_blocking(move || Spool::create(&root, held, slot_freed))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|created| created)
            };
            match created {
                Ok(spool) => {
                    env.metrics.session_ended("error");
                    ship::ship(
                        &env.client,
                        &spool,
                        Source::Ended(Box::new(report)),
                        &env.metrics,
                        &stop,
                    )
                    .await
                }
                Err(e) => cannot_spool(&env, &held, e, &slot_freed, &stop).await,
            }
        }
    }
}

/// The lease's workflow checked with this robot's settings (the hub
/// validated it without them, such as the `env` allow-list), and its
/// params bound; or the error code and message the session ends with.
fn prepare(env: &SessionEnv, lease: &Lease) -> Result<Prepared, (&'static str, String)> {
    let origin = format!(
        "workflow {} ({}).{}",
        lease.workflow.id,
        lease.workflow.name,
        if lease.workflow.format == "json" {
            "json"
        } else {
            "yaml"
        }
    );
    let load = LoadOptions {
        env_allow: Some(env.options.env_allow.clone()),
        allowed_actions: Some(env.allowed_actions.clone()),
        allow_file_urls: Some(env.options.browser.allow_file_urls),
        fleet_offers: None,
        // Its `call` steps run the workflows the hub put in the lease.
        calls: Some(Calls::new(Arc::new(Sources(
            lease
                .workflow
                .called
                .iter()
                .map(|c| {
                    let source = calls::Source {
                        text: c.source.clone(),
                        origin: format!("workflow {}.{}", c.name, c.format),
                    };
                    (c.name.clone(), source)
                })
                .collect(),
        )))),
    };
    let workflow = env
        .checked
        .get_or_check(&lease.workflow, || {
            parse_workflow(&lease.workflow.source, &origin, &env.registry, &load)
        })
        .map_err(|problems| ("invalid_workflow", problems.to_string()))?;
    let inputs = ParamInputs {
        file: lease.params.clone(),
        ..ParamInputs::default()
    };
    let params = bind_params(&workflow, &inputs)
        .map_err(|problems| ("invalid_params", problems.to_string()))?;
    // The values live in this session's memory only: never in the spool
    // (which keeps a `HeldLease`, no params), a log or a file; the
    // masker gets each one.
    let credentials =
        bind_credentials(&workflow.credentials, &lease.credentials, "the hub's lease")
            .map_err(|problems| ("invalid_credentials", problems.to_string()))?;
    let resume = lease.resume.as_ref().map(resumption).transpose()?;
    Ok((workflow, params.with_credentials(credentials), resume))
}

/// A checked workflow, its bound params, and where a session that waited
/// goes on from.
type Prepared = (Arc<tasuki_actions::Workflow>, BoundParams, Option<Resume>);

/// The lease's resumption in the executor's terms (the same JSON).
fn resumption(r: &Resumption) -> Result<Resume, (&'static str, String)> {
    let bad = |e: serde_json::Error| {
        (
            tasuki_actions::runtime::registry::codes::RESUME,
            format!("the hub's checkpoint of this session cannot be read: {e}"),
        )
    };
    let checkpoint = serde_json::from_value(r.checkpoint.clone()).map_err(bad)?;
    let outcome = serde_json::to_value(&r.outcome)
        .and_then(serde_json::from_value)
        .map_err(bad)?;
    Ok(Resume {
        checkpoint,
        outcome,
    })
}

/// Runs a checked session with its spool sink, while the sender ships
/// what it produces; then removes its directories.
async fn run_checked(
    env: &Arc<SessionEnv>,
    held: HeldLease,
    (workflow, mut params, resume): Prepared,
    state_dir: PathBuf,
    cancel: CancellationToken,
    stop: CancellationToken,
    slot_freed: SlotFreed,
) -> Shipped {
    params
        .secret_values
        .push(env.robot_secret.expose_secret().to_string());
    let scratch = match env.scratch.take().await {
        Ok(s) => s,
        Err(e) => return cannot_spool(env, &held, e, &slot_freed, &stop).await,
    };
    let (session_dir, artifacts_dir) = (scratch.work_dir, scratch.artifacts_dir);
    let id = held.session_id;
    let spool = Spool::adopt(scratch.spool_dir, held, slot_freed);
    let step_ids = workflow.reported_step_ids();
    let sink = SpoolSink::new(scratch.logs, &step_ids, env.metrics.clone(), cancel.clone());
    // Beside the work dir, so the sessions root's removal at start takes it.
    let private_dir = session_dir.with_extension("private");
    let options = ExecOptions {
        session_id: id.to_string(),
        work_dir: session_dir.clone(),
        artifacts_dir: artifacts_dir.clone(),
        state_dir,
        private_dir: Some(private_dir.clone()),
        ..env.options.clone()
    };
    let executor = Executor::new(env.registry.clone(), options);
    let (spool_dir, held_lease) = (spool.dir.clone(), spool.lease.clone());
    let shipping = {
        let env = env.clone();
        let source = Source::Live {
            sink: sink.clone(),
            artifacts_dir: artifacts_dir.clone(),
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            // Disk work that the first step need not wait for: the lease
            // only a restarted agent reads, and the next session's
            // directories. On a small machine it would otherwise compete
            // with the first step for the CPU.
            tokio::time::sleep(BACKGROUND_DISK_WORK_AFTER).await;
            if let Err(e) = spool.record_lease().await {
                tracing::warn!(session_queue_id = spool.lease.session_id, error = %e, "cannot record the spool's lease; should the agent crash now, the session would end as robot_lost");
            }
            env.scratch.refill();
            let outcome = ship::ship(&env.client, &spool, source, &env.metrics, &stop).await;
            (outcome, spool.dir)
        })
    };
    let flusher = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.keep_flushed(SPOOL_FLUSH_EVERY).await })
    };
    // Nobody waits on a robot: a waiting step suspends the session, and
    // its hub gathers the answer while the robot runs other sessions.
    let start = Start {
        waiter: Arc::new(SuspendingWaiter),
        resume,
    };
    let report = executor
        .run_with(&workflow, &params, Arc::new(sink.clone()), cancel, start)
        .await;
    ship::record_report(&sink, &spool_dir, &held_lease).await;
    env.metrics.session_ended(report.status.as_str());
    tracing::info!(session_queue_id = id, status = ?report.status, duration_ms = report.duration_ms, "session ended");
    let shipped = shipping.await;
    flusher.abort();
    sink.flush().await;
    let (outcome, spool_dir) = match shipped {
        Ok((outcome, dir)) => (outcome, Some(dir)),
        Err(e) => {
            tracing::error!(session_queue_id = id, error = %e, "the shipping task failed");
            (Shipped::Interrupted, None)
        }
    };
    if outcome != Shipped::Interrupted {
        // A reported session's spool is gone already; one whose lease the
        // hub no longer honours can never be delivered, so it goes too.
        let spool_dir = spool_dir.filter(|_| outcome == Shipped::LeaseLost);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&session_dir);
            let _ = std::fs::remove_dir_all(&private_dir);
            let _ = std::fs::remove_dir_all(&artifacts_dir);
            if let Some(dir) = spool_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        })
        .await;
    }
    outcome
}

/// The spool cannot be written (the disk is full or read-only): the hub
/// hears why at once, without one.
async fn cannot_spool(
    env: &SessionEnv,
    lease: &HeldLease,
    e: std::io::Error,
    slot_freed: &SlotFreed,
    stop: &CancellationToken,
) -> Shipped {
    tracing::error!(session_queue_id = lease.session_id, error = %e, "cannot create the session's spool");
    let report = ship::failed_before_start(
        lease,
        "agent_error",
        format!("the robot cannot write its log spool: {e}"),
    );
    env.metrics.session_ended("error");
    slot_freed.set();
    match env
        .client
        .finish(lease.session_id, &lease.lease_id, &report, stop)
        .await
    {
        Ok(_) => Shipped::Finished,
        Err(CallError::LeaseLost(_)) => Shipped::LeaseLost,
        Err(CallError::Cancelled) => Shipped::Interrupted,
        Err(e) => {
            tracing::error!(session_queue_id = lease.session_id, error = %e, "the hub refused the final report");
            Shipped::Finished
        }
    }
}
