//! The robot protocol (docs/protocol.md): what a robot and the hub say to
//! each other under `/v1/robot/`. Robot-sent types reject unknown fields;
//! hub-sent types do not, so that a newer hub can add fields.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::logs::LogLine;
use crate::session::{SessionError, SessionStatus, StepState};

pub const MAX_ROBOT_NAME_LEN: usize = 64;

/// How long the hub holds a poll open when it has nothing to say.
pub const HOLD_SECONDS: u64 = 25;
/// A robot's client timeout for a poll: longer than the hold, so that the
/// hub, not the client, ends an idle poll.
pub const POLL_CLIENT_TIMEOUT_SECONDS: u64 = HOLD_SECONDS + 10;
/// A lease not renewed for this long ends its session as `error` with code
/// [`ROBOT_LOST`].
pub const LEASE_TTL_SECONDS: u64 = 60;

/// Every call about a leased session carries its lease id in this header.
pub const LEASE_HEADER: &str = "tasuki-lease";

/// The error code of a session whose robot stopped renewing its lease.
pub const ROBOT_LOST: &str = "robot_lost";
/// The code of a session an agent was stopped in the middle of and
/// reported when it started again (its spool's lines delivered).
pub const AGENT_RESTARTED: &str = "agent_restarted";
/// The error code of a call about a lease the hub no longer honours.
pub const LEASE_LOST: &str = "lease_lost";

/// Log lines per batch, at most.
pub const MAX_LOG_BATCH: usize = 5_000;
/// Bytes of one log line's message, at most (the agent cuts at 16 KiB).
pub const MAX_LOG_MESSAGE_BYTES: usize = 64 * 1024;
/// Bytes of one artifact, at most.
pub const MAX_ARTIFACT_BYTES: usize = 50 * 1024 * 1024;
/// A finished session's `outputs`, as JSON, at most (the executor renders
/// no more: tasuki_actions' `MAX_OUTPUTS_BYTES`).
pub const MAX_OUTPUTS_BYTES: usize = 64 * 1024;
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_LEN: usize = 64;
/// Actions one robot may offer, at most.
pub const MAX_ACTION_OFFERS: usize = 1000;
/// An action's full name: a pack's name (32) and its action's (32), or a
/// built-in family and action, with the dot between.
pub const MAX_ACTION_NAME_LEN: usize = 65;
/// A pack's version, or the agent's for a built-in action.
pub const MAX_OFFER_VERSION_LEN: usize = 64;

/// Checks a robot name: 1 to 64 ASCII letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit. Names end up in URLs, logs and file
/// names, so they are kept plain.
pub fn check_robot_name(name: &str) -> Result<(), String> {
    check_plain_name("robot name", name, MAX_ROBOT_NAME_LEN)
}

/// Labels follow the rule of names.
pub fn check_label(label: &str) -> Result<(), String> {
    check_plain_name("label", label, MAX_LABEL_LEN)
}

/// Artifact names are plain file names: the rule of robot names, up to
/// 128 characters. They become file names on the hub.
pub fn check_artifact_name(name: &str) -> Result<(), String> {
    check_plain_name("artifact name", name, 128)
}

fn check_plain_name(what: &str, name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("a {what} cannot be empty"));
    }
    if name.len() > max {
        return Err(format!(
            "a {what} has at most {max} characters, this one has {}",
            name.chars().count()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "a {what} may hold only ASCII letters, digits, `.`, `_` and `-`, not {c:?}"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("a {what} starts with a letter or a digit"));
    }
    Ok(())
}

/// Checks an action's name as a robot offers it: `family.action` (such as
/// `excel.read_sheet`) or a plain built-in name (`log`); each part starts
/// with a lowercase letter and holds lowercase letters, digits and `_`.
pub fn check_action_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an action name cannot be empty".into());
    }
    if name.len() > MAX_ACTION_NAME_LEN {
        return Err(format!(
            "an action name has at most {MAX_ACTION_NAME_LEN} characters, this one has {}",
            name.chars().count()
        ));
    }
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        return Err(format!(
            "an action name is `family.action` or a plain name, with at most one `.`: `{name}`"
        ));
    }
    for part in parts {
        check_action_part(part).map_err(|e| format!("`{name}`: {e}"))?;
    }
    Ok(())
}

/// A pack's name, or one part of an action's: 1 to 32 lowercase ASCII
/// letters, digits and `_`, starting with a letter (docs/action-packs.md).
pub fn check_pack_name(name: &str) -> Result<(), String> {
    check_action_part(name)
}

fn check_action_part(part: &str) -> Result<(), String> {
    if !part.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("each part of an action name starts with a lowercase letter".into());
    }
    if part.len() > 32 {
        return Err("each part of an action name has at most 32 characters".into());
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "an action name holds only lowercase ASCII letters, digits, `_` and one `.`, not {c:?}"
        ));
    }
    Ok(())
}

/// One action a robot offers: what the hub validates workflows against
/// and routes sessions by (docs/protocol.md, *The action catalog*).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionOffer {
    /// The full name steps use: `excel.read_sheet`, `shell.run`, `log`.
    pub name: String,
    /// The pack that serves it; absent for a built-in action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<String>,
    /// The pack's version, or the agent's for a built-in action.
    pub version: String,
    /// SHA-256 (lowercase hex) of the action's argument and output
    /// schemas, so that two versions of an action can be told apart.
    pub schema_sha256: String,
}

impl ActionOffer {
    /// Checks every field; `Err` names the field (below the offer) and
    /// what is wrong with it.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        check_action_name(&self.name).map_err(|e| ("name", e))?;
        if let Some(pack) = &self.pack {
            check_pack_name(pack).map_err(|e| ("pack", format!("a pack name: {e}")))?;
            if self.name.split_once('.').map(|(family, _)| family) != Some(pack.as_str()) {
                return Err((
                    "name",
                    format!(
                        "an action of the pack `{pack}` is named `{pack}.<action>`, not `{}`",
                        self.name
                    ),
                ));
            }
        }
        if self.version.is_empty()
            || self.version.len() > MAX_OFFER_VERSION_LEN
            || self.version.chars().any(char::is_control)
        {
            return Err((
                "version",
                format!("1 to {MAX_OFFER_VERSION_LEN} bytes of printable text"),
            ));
        }
        if self.schema_sha256.len() != 64
            || !self
                .schema_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err((
                "schema_sha256",
                "a SHA-256 in 64 lowercase hexadecimal digits".into(),
            ));
        }
        Ok(())
    }
}

/// `PUT /v1/robot/robots/{name}`: register, or re-register after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRobot {
    /// Chosen once by `tasuki register` and kept in the credentials file:
    /// it tells a restart of the same robot from a second machine that
    /// picked the same name.
    pub instance_id: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub version: String,
    pub max_concurrency: u32,
    #[serde(default)]
    pub host: HostFacts,
    /// Take the name over from another instance (a rebuilt machine).
    #[serde(default)]
    pub replace: bool,
    /// Every action the robot runs (built-ins and packs, those its
    /// `allowed_actions` refuse left out). Absent from agents older than
    /// the catalog: the hub then knows nothing of the robot's actions and
    /// routes it any session, as it did before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<ActionOffer>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobotRegistered {
    pub robot_id: i64,
    pub name: String,
    pub hold_seconds: u64,
    pub lease_ttl_seconds: u64,
    /// Every scope of the access key that registered the robot, so that
    /// `tasuki register` can warn about a key that holds more than
    /// `robot`. Empty from a hub older than this field.
    #[serde(default)]
    pub key_scopes: Vec<String>,
    /// The hub reads `PollRequest::poll_seq`; false from a hub older than
    /// it, which refuses the field.
    #[serde(default)]
    pub poll_seq: bool,
}

/// `GET /v1/robot/robots/{name}?instance_id=…`: the robot is registered
/// to this key and this machine (the call fails otherwise, saying why).
/// Changes nothing; `tasuki doctor` uses it to check the token and the
/// registration, and the clock against `server_time`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobotCheck {
    pub robot_id: i64,
    pub name: String,
    /// The hub's clock (RFC 3339, milliseconds).
    pub server_time: String,
}

/// Host metrics, sent with every poll (the heartbeat).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostMetrics {
    pub cpu_percent: f32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub disk_free_bytes: u64,
    pub disk_total_bytes: u64,
    /// The agent's own resident memory.
    pub agent_rss_bytes: u64,
}

/// A lease the robot holds, renewed by every poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldLease {
    pub session_id: i64,
    pub lease_id: String,
}

/// `POST /v1/robot/robots/{name}/poll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    pub instance_id: String,
    /// Chosen by the robot per call; a retry of a poll whose answer was
    /// lost repeats it, and gets the same leases again.
    pub poll_id: String,
    /// Sessions the robot would take now; 0 while it runs a single-process
    /// session or drains. This is the robot's acknowledgement in advance:
    /// a lease this poll is answered with is the robot's from the moment
    /// the hub sends it, and the robot runs it at once (or `release`s it).
    pub free_slots: u32,
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub held: Vec<HeldLease>,
    #[serde(default)]
    pub metrics: Option<HostMetrics>,
    /// Orders this robot's poll ids: each new poll id has a higher number
    /// than the one before, and a poll sent again keeps its number. A poll
    /// with a number lists in `held` every lease the robot received in
    /// answer to a lower-numbered one and still runs, so the hub takes back
    /// an unconfirmed lease of a lower-numbered poll that it does not list:
    /// the robot never received it. Sent only to a hub whose registration
    /// answer says `poll_seq: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_seq: Option<u64>,
}

/// A session handed to a robot: `running` on it from the moment the hub
/// sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub session_id: i64,
    pub lease_id: String,
    pub workflow: LeasedWorkflow,
    /// The session's params, secrets included: only the robot sees them.
    pub params: Map<String, Value>,
    /// The values of the credentials its workflow declares, `{name:
    /// {field: text}}`, read when the lease was granted. Absent for a
    /// workflow that uses none, so hubs and agents older than
    /// credentials still understand each other.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub credentials: Map<String, Value>,
    /// For a session that waited: where to go on from, and how the wait
    /// ended. The robot runs it from the step after the waiting one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resumption>,
}

/// A suspended session's way back: its checkpoint, as the robot that
/// suspended it wrote it (opaque to the hub, which seals it at rest), and
/// the wait's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resumption {
    pub checkpoint: Value,
    pub outcome: WaitOutcome,
}

/// How a wait ended (`tasuki_actions::runtime::wait::WaitOutcome` on the
/// robot, the same JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WaitOutcome {
    Approved {
        by: String,
        at: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    Rejected {
        by: String,
        at: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    Event {
        payload: Value,
        at: Timestamp,
    },
    TimedOut {
        at: Timestamp,
    },
    Cancelled {
        at: Timestamp,
    },
}

impl WaitOutcome {
    /// `approved`, `rejected`, `event`, `timed_out` or `cancelled`.
    pub fn name(&self) -> &'static str {
        match self {
            WaitOutcome::Approved { .. } => "approved",
            WaitOutcome::Rejected { .. } => "rejected",
            WaitOutcome::Event { .. } => "event",
            WaitOutcome::TimedOut { .. } => "timed_out",
            WaitOutcome::Cancelled { .. } => "cancelled",
        }
    }
}

/// What a waiting step waits for, as the robot reports it when it
/// suspends the session (`FinishSession::suspend`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitSpec {
    pub step_id: String,
    pub kind: crate::session::WaitKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    pub timeout_ms: u64,
    /// `approve` or `reject`: an approval's answer when nobody decides.
    pub on_timeout: OnTimeout,
    /// An event's signing key: the hub then takes the event, signed with
    /// it, at `POST /v1/callbacks/{session}/{event}` without an access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// An approval's `approvers`: the access key ids that may decide it
    /// (none listed: any key with `session_queue.write`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    Approve,
    Reject,
}

/// A session stopped at a waiting step: what it waits for, and the
/// checkpoint a robot resumes it from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suspension {
    pub wait: WaitSpec,
    pub checkpoint: Value,
}

/// The largest checkpoint a hub stores, as JSON.
pub const MAX_CHECKPOINT_BYTES: usize = 4 * 1024 * 1024;
/// The longest a wait may last (the workflow language's limit too).
pub const MAX_WAIT_MS: u64 = 30 * 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasedWorkflow {
    pub id: i64,
    pub name: String,
    pub single_process_mode: bool,
    /// `yaml` or `json`.
    pub format: String,
    /// The workflow file as it was registered.
    pub source: String,
    /// The workflows its `call` steps run, and theirs, each the newest of
    /// its name when the lease was granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub called: Vec<CalledWorkflow>,
}

/// A workflow a leased one calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalledWorkflow {
    pub name: String,
    /// `yaml` or `json`.
    pub format: String,
    pub source: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PollResponse {
    #[serde(default)]
    pub leases: Vec<Lease>,
    /// Sessions to cancel now.
    #[serde(default)]
    pub cancel: Vec<i64>,
    /// Held leases the hub no longer honours: stop them, ship nothing more.
    #[serde(default)]
    pub lost: Vec<i64>,
    pub hold_seconds: u64,
    pub lease_ttl_seconds: u64,
}

/// `POST /v1/robot/sessions/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogBatch {
    pub lines: Vec<LogLine>,
}

/// The highest `seq` the hub has stored for the session: lines up to it
/// are safe to drop, and the next batch starts after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsStored {
    pub high_seq: u64,
}

/// `PUT /v1/robot/sessions/{id}/steps`: every step's record, replacing the
/// stored ones unless `revision` is not newer than what is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepsUpdate {
    pub revision: u64,
    pub steps: Vec<StepState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepsStored {
    pub revision: u64,
}

/// `POST /v1/robot/sessions/{id}/finish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinishSession {
    /// Chosen once per session by the robot; a repeat with the same key
    /// gets the first answer.
    pub idempotency_key: String,
    pub status: SessionStatus,
    #[serde(with = "crate::time::millis")]
    pub ended_at: Timestamp,
    #[serde(default)]
    pub error: Option<SessionError>,
    #[serde(default)]
    pub steps: Vec<StepState>,
    #[serde(default)]
    pub outputs: Option<Value>,
    /// With status `waiting`: the session stopped at a waiting step and
    /// frees the robot; the hub keeps it until the wait is answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<Suspension>,
}

/// A robot as `GET /v1/robots` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobotItem {
    pub id: i64,
    pub name: String,
    pub labels: Vec<String>,
    pub version: String,
    pub state: RobotState,
    pub max_concurrency: u32,
    pub draining: bool,
    #[serde(with = "crate::time::millis_opt")]
    pub last_heartbeat_at: Option<Timestamp>,
    pub host: HostFacts,
    pub metrics: Option<HostMetrics>,
    pub running_sessions: Vec<i64>,
    /// The robot's action catalog as it last registered; `null` for an
    /// agent older than the catalog (its actions are unknown).
    #[serde(default)]
    pub actions: Option<Vec<ActionOffer>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RobotState {
    Idle,
    Busy,
    Offline,
}

impl fmt::Display for RobotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RobotState::Idle => "idle",
            RobotState::Busy => "busy",
            RobotState::Offline => "offline",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobotList {
    pub robots: Vec<RobotItem>,
    pub total_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease without credentials reads and writes as before them, so
    /// older agents and hubs understand newer ones.
    #[test]
    fn a_lease_without_credentials_has_no_credentials_field() {
        let old = serde_json::json!({"session_id": 1, "lease_id": "l",
            "workflow": {"id": 2, "name": "w", "single_process_mode": false,
                         "format": "yaml", "source": "x"},
            "params": {}});
        let lease: Lease = serde_json::from_value(old.clone()).unwrap();
        assert!(lease.credentials.is_empty());
        assert_eq!(serde_json::to_value(&lease).unwrap(), old);
    }

    #[test]
    fn names() {
        assert!(check_robot_name("standard-1").is_ok());
        assert!(check_robot_name("sunaba_2.local").is_ok());
        assert!(check_robot_name("").is_err());
        assert!(check_robot_name("-x").is_err());
        assert!(check_robot_name("a b").is_err());
        assert!(check_robot_name(&"a".repeat(65)).is_err());
        assert!(check_artifact_name("quickstart.png").is_ok());
        assert!(check_artifact_name("../etc").is_err());
        assert!(check_artifact_name("a/b").is_err());
    }

    fn offer(name: &str, pack: Option<&str>) -> ActionOffer {
        ActionOffer {
            name: name.into(),
            pack: pack.map(String::from),
            version: "1.0.0".into(),
            schema_sha256: "0".repeat(64),
        }
    }

    #[test]
    fn action_offers() {
        assert!(offer("log", None).check().is_ok());
        assert!(offer("browser.get_text", None).check().is_ok());
        assert!(offer("excel.read_sheet", Some("excel")).check().is_ok());
        assert!(
            offer(&format!("{0}.{0}", "a".repeat(32)), None)
                .check()
                .is_ok()
        );
        for bad in [
            "",
            "Excel.read",
            "a.b.c",
            ".log",
            "log.",
            "a-b",
            "1x",
            "a..b",
        ] {
            assert_eq!(offer(bad, None).check().unwrap_err().0, "name", "{bad:?}");
        }
        assert_eq!(
            offer("excel.read", Some("word")).check().unwrap_err().0,
            "name"
        );
        assert_eq!(offer("x.y", Some("X")).check().unwrap_err().0, "pack");
        let mut o = offer("log", None);
        o.version = "1\n".into();
        assert_eq!(o.check().unwrap_err().0, "version");
        o.version = "v".repeat(65);
        assert_eq!(o.check().unwrap_err().0, "version");
        let mut o = offer("log", None);
        o.schema_sha256 = "A".repeat(64);
        assert_eq!(o.check().unwrap_err().0, "schema_sha256");
    }

    #[test]
    fn robot_requests_refuse_unknown_fields() {
        let err = serde_json::from_str::<PollRequest>(
            r#"{"instance_id":"i","poll_id":"p","free_slots":1,"frees":2}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("frees"), "{err}");
        let err = serde_json::from_str::<ActionOffer>(
            r#"{"name":"log","version":"1","schema_sha256":"","schema":{}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("schema"), "{err}");
    }
}
