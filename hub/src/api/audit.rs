//! `GET /v1/audit_log`: who changed what (db/audit.rs), newest first.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use tasuki_protocol::AuditLog;

use super::Hub;
use super::auth::{Authorized, need};
use super::error::ApiError;
use super::query::{QueryParams, page};
use crate::db::audit;

pub async fn list(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::AuditRead>,
    mut q: QueryParams,
) -> Result<Json<AuditLog>, ApiError> {
    let page = page(&mut q, 50, 500)?;
    q.finish()?;
    let entries = hub
        .db
        .call(move |conn| audit::page(conn, page.limit, page.offset))
        .await?;
    Ok(Json(AuditLog { entries }))
}
