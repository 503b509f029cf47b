//! Wire types shared by the Tasuki agent and `tasuki-hub`, and by nothing
//! else.
//!
//! The public API follows the AUTORO REST API: the session queue and
//! workflow shapes, the JWT claims and the scope names are those of that
//! document, so its examples work against the hub. Types that a client
//! sends reject unknown fields (a typo must not be silently ignored);
//! types that a server sends do not, so that a newer hub can add fields
//! without breaking an older agent.

pub mod auth;
pub mod credential;
pub mod error;
pub mod log_escape;
pub mod logs;
pub mod notification;
pub mod robot;
pub mod schedule;
pub mod scope;
pub mod session;
pub mod time;
pub mod workflow;

pub use auth::{Claims, TokenRequest, TokenResponse};
pub use credential::{
    AllowChange, CreateCredential, Credential, CredentialAllow, CredentialList, UpdateCredential,
};
pub use error::{ErrorBody, ErrorDetail, ProblemItem};
pub use logs::{LogLevel, LogLine, LogsResponse};
pub use notification::{
    CreateNotification, Delivery, DeliveryList, DeliveryStatus, Notification, NotificationList,
};
pub use robot::{
    ActionOffer, FinishSession, HeldLease, HostFacts, HostMetrics, Lease, LeasedWorkflow, LogBatch,
    LogsStored, PollRequest, PollResponse, RegisterRobot, RobotCheck, RobotItem, RobotList,
    RobotRegistered, RobotState, StepsStored, StepsUpdate,
};
pub use schedule::{
    AuditEntry, AuditLog, CreateSchedule, CreateTrigger, Missed, Overlap, Schedule, ScheduleList,
    ScheduleOutcome, Trigger, TriggerList,
};
pub use scope::{Scope, ScopeError, Scopes};
pub use session::{
    CreateSessionQueue, RerunSessionQueue, RobotRef, SessionError, SessionOrigin, SessionQueue,
    SessionQueueList, SessionStatus, StepState, StepStatus, WorkflowRef,
};
pub use workflow::{Concurrency, CreateWorkflow, OnLimit, WorkflowItem, WorkflowList};
