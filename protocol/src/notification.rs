//! Notifications out: a signed JSON event POSTed to a URL when a session
//! ends (hub/README.md, "Notifications").

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// `POST /v1/notifications`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNotification {
    /// `http://` or `https://`.
    pub url: String,
    /// Session statuses that send an event: `success`, `error`,
    /// `cancelled`; all three when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// Only this workflow's sessions; every workflow's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: i64,
    pub url: String,
    pub events: Vec<String>,
    pub workflow_id: Option<i64>,
    /// The signing secret: in the answer that made it only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(with = "crate::time::millis")]
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationList {
    pub notifications: Vec<Notification>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet; tried again at `next_attempt_at`.
    Pending,
    Delivered,
    /// Every attempt failed.
    Failed,
}

/// One event to one URL, and what its attempts met.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: i64,
    pub notification_id: i64,
    pub session_id: Option<i64>,
    /// `session.success`, `session.error`, `session.cancelled` or `test`.
    pub event: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(with = "crate::time::millis_opt")]
    pub next_attempt_at: Option<Timestamp>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    #[serde(with = "crate::time::millis")]
    pub created_at: Timestamp,
    #[serde(with = "crate::time::millis_opt")]
    pub delivered_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryList {
    /// Newest first.
    pub deliveries: Vec<Delivery>,
}
