//! One leased session on this robot: check it, run it through the action
//! runtime, and ship everything it produced. The lease needs no separate
//! acknowledgement: the poll it answered offered the free slot, and the
//! next poll lists it as held.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tasuki_actions::language::allowed::Allowed;
use tasuki_actions::language::params::{ParamInputs, bind_params};
use tasuki_actions::{ExecOptions, Executor, LoadOptions, Registry, parse_workflow};
use tasuki_protocol::Lease;
use tokio_util::sync::CancellationToken;

use super::client::{CallError, HubClient};
use super::health::Metrics;
use super::ship::{self, Shipped, Spool, SpoolLease};

/// How often a session's spool is flushed to disk at the latest.
const SPOOL_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// What every session on this robot shares.
pub struct SessionEnv {
    pub client: Arc<HubClient>,
    pub registry: Registry,
    /// The action families this robot runs; a session using another one
    /// fails validation before any step runs.
    pub allowed_actions: Allowed,
    pub work_dir: PathBuf,
    /// Each session writes into its own directory under this.
    pub artifacts_dir: PathBuf,
    pub options: ExecOptions,
    pub metrics: Arc<Metrics>,
}

impl SessionEnv {
    pub fn spool_root(&self) -> PathBuf {
        self.work_dir.join("spool")
    }
}

/// How a session ended on this robot.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Ran, and its report reached the hub.
    Reported,
    /// The hub stopped honouring the lease.
    LeaseLost,
    /// The agent is exiting; the spool stays for the next start.
    Interrupted,
}

/// Runs a leased session to its end. `cancel` is the session's own token
/// (the hub asked, or the agent is stopping hard); `stop` interrupts
/// shipping when the agent exits without waiting.
pub async fn run(
    env: Arc<SessionEnv>,
    lease: Lease,
    cancel: CancellationToken,
    stop: CancellationToken,
    finishing: Arc<AtomicBool>,
) -> Outcome {
    let id = lease.session_id;
    let received = Instant::now();
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
    // Checked again here: the hub validated it without this robot's
    // settings (such as the `env` allow-list).
    let load = LoadOptions {
        env_allow: Some(env.options.env_allow.clone()),
        allowed_actions: Some(env.allowed_actions.clone()),
    };
    let prepared = parse_workflow(&lease.workflow.source, &origin, &env.registry, &load)
        .map_err(|problems| ("invalid_workflow", problems.to_string()))
        .and_then(|workflow| {
            let inputs = ParamInputs {
                file: lease.params.clone(),
                ..ParamInputs::default()
            };
            bind_params(&workflow, &inputs)
                .map(|params| (workflow, params))
                .map_err(|problems| ("invalid_params", problems.to_string()))
        });
    env.metrics
        .pickup_seconds
        .observe(super::health::seconds_since(received));
    tracing::info!(session_queue_id = id, workflow = %lease.workflow.name, "session started");

    let spool_lease = SpoolLease {
        session_id: id,
        lease_id: lease.lease_id.clone(),
    };
    let spool = match Spool::create(&env.spool_root(), spool_lease.clone(), finishing.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(session_queue_id = id, error = %e, "cannot create the session's spool");
            let report = ship::failed_before_start(
                &spool_lease,
                "agent_error",
                format!("the robot cannot write its log spool: {e}"),
            );
            return finish_only(&env, &spool_lease, report, &finishing, &stop).await;
        }
    };
    let (workflow, params) = match prepared {
        Ok(p) => p,
        Err((code, message)) => {
            env.metrics.session_ended("error");
            let report = ship::failed_before_start(&spool_lease, code, message);
            let outcome = ship::ship(
                &env.client,
                &spool,
                ship::Shipper::none(),
                None,
                Some(report),
                &env.metrics,
                &stop,
            )
            .await;
            return outcome.into();
        }
    };

    let session_dir = env.work_dir.join("sessions").join(id.to_string());
    let artifacts_dir = env.artifacts_dir.join(id.to_string());
    if let Err(e) =
        std::fs::create_dir_all(&session_dir).and_then(|()| std::fs::create_dir_all(&artifacts_dir))
    {
        let report = ship::failed_before_start(
            &spool_lease,
            "agent_error",
            format!(
                "the robot cannot create the session directory {}: {e}",
                session_dir.display()
            ),
        );
        return finish_only(&env, &spool_lease, report, &finishing, &stop).await;
    }
    let step_ids: Vec<String> = workflow.all_steps().iter().map(|s| s.id.clone()).collect();
    let sink = match spool.sink(&step_ids, env.metrics.clone()) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let report = ship::failed_before_start(
                &spool_lease,
                "agent_error",
                format!("the robot cannot write its log spool: {e}"),
            );
            return finish_only(&env, &spool_lease, report, &finishing, &stop).await;
        }
    };
    let options = ExecOptions {
        work_dir: session_dir.clone(),
        artifacts_dir: artifacts_dir.clone(),
        ..env.options.clone()
    };
    let executor = Executor::new(env.registry.clone(), options);
    let shipping = {
        let env = env.clone();
        let shipper = sink.shipper();
        let stop = stop.clone();
        tokio::spawn(async move {
            let outcome = ship::ship(
                &env.client,
                &spool,
                shipper,
                Some(&artifacts_dir),
                None,
                &env.metrics,
                &stop,
            )
            .await;
            (outcome, spool)
        })
    };
    let flusher = {
        let sink = sink.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SPOOL_FLUSH_EVERY).await;
                sink.flush();
            }
        })
    };
    let report = executor.run(&workflow, &params, sink.clone(), cancel).await;
    env.metrics.session_ended(report.status.as_str());
    tracing::info!(session_queue_id = id, status = ?report.status, duration_ms = report.duration_ms, "session ended");
    let shipped = shipping.await;
    flusher.abort();
    sink.flush();
    let outcome = match shipped {
        Ok((outcome, _)) => outcome.into(),
        Err(e) => {
            tracing::error!(session_queue_id = id, error = %e, "the shipping task failed");
            Outcome::Interrupted
        }
    };
    if outcome != Outcome::Interrupted {
        let _ = std::fs::remove_dir_all(&session_dir);
        let _ = std::fs::remove_dir_all(env.artifacts_dir.join(id.to_string()));
    }
    outcome
}

async fn finish_only(
    env: &SessionEnv,
    lease: &SpoolLease,
    report: tasuki_protocol::FinishSession,
    finishing: &AtomicBool,
    stop: &CancellationToken,
) -> Outcome {
    env.metrics.session_ended("error");
    finishing.store(true, std::sync::atomic::Ordering::SeqCst);
    match env
        .client
        .finish(lease.session_id, &lease.lease_id, &report, stop)
        .await
    {
        Ok(_) => Outcome::Reported,
        Err(CallError::LeaseLost(_)) => Outcome::LeaseLost,
        Err(CallError::Cancelled) => Outcome::Interrupted,
        Err(e) => {
            tracing::error!(session_queue_id = lease.session_id, error = %e, "the hub refused the final report");
            Outcome::Reported
        }
    }
}

impl From<Shipped> for Outcome {
    fn from(s: Shipped) -> Outcome {
        match s {
            Shipped::Finished => Outcome::Reported,
            Shipped::LeaseLost => Outcome::LeaseLost,
            Shipped::Interrupted => Outcome::Interrupted,
        }
    }
}
