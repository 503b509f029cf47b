//! Workflows in the public API.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A workflow as `GET /v1/workflows` lists it, with the fields of the
/// AUTORO document. The ones Tasuki has no use for keep fixed values
/// (`vpn_option_id` and `error_handler_workflow_id` null, `debug_mode`
/// false, `receiver_infos` empty) so that clients written for AUTORO read
/// them unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowItem {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub vpn_option_id: Option<i64>,
    pub debug_mode: bool,
    pub robot_type: String,
    pub single_process_mode: bool,
    pub error_handler_workflow_id: Option<i64>,
    pub color: String,
    pub receiver_infos: String,
    /// The names of the robots this workflow is pinned to; empty means any.
    pub workflow_robots: Vec<String>,
    /// Labels a robot must carry, every one, to run this workflow. Not
    /// AUTORO's: present only when there are some, so that the item keeps
    /// AUTORO's shape otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub robot_labels: Vec<String>,
    /// How many of its sessions may run at once. Not AUTORO's: present
    /// only when the workflow has a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
}

/// A workflow's concurrency policy: at most `limit` of its sessions run at
/// once (at most `limit` per value of the param `key`, when given), and
/// what a session queued at the limit does (hub/README.md, *Concurrency
/// policies*).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    pub limit: u32,
    #[serde(default)]
    pub on_limit: OnLimit,
    /// A declared, non-secret param: the limit holds per value of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// What a new session does when its workflow (or its key) is at the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Waits in the queue until a running one ends.
    #[default]
    Wait,
    /// Is refused: 409 `concurrency_limit`.
    Refuse,
    /// Is queued, and the oldest queued or running one is cancelled.
    CancelOldest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowItem>,
    pub total_count: u64,
}

/// `POST /v1/workflows`: exactly one of `yaml` (the text of a workflow file)
/// or `workflow` (the same document as a JSON object).
///
/// `workflow` is kept as raw JSON so that the hub can parse it with the
/// workflow loader itself, which rejects duplicate keys and reports lines
/// and columns.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkflow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yaml: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Box<RawValue>>,
    /// Overrides the workflow file's own `description`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_robots: Option<Vec<String>>,
    /// Labels a robot must carry, every one, to run the workflow's
    /// sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robot_labels: Option<Vec<String>>,
    /// A workflow queued when one of this workflow's sessions ends in
    /// error, with the failure's details as params (hub/README.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_handler_workflow_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
}

impl CreateWorkflow {
    pub fn from_yaml(text: impl Into<String>) -> CreateWorkflow {
        CreateWorkflow {
            yaml: Some(text.into()),
            ..CreateWorkflow::default()
        }
    }

    pub fn from_json(workflow: &serde_json::Value) -> serde_json::Result<CreateWorkflow> {
        Ok(CreateWorkflow {
            workflow: Some(serde_json::value::to_raw_value(workflow)?),
            ..CreateWorkflow::default()
        })
    }
}
