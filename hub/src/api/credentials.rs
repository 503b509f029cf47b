//! Named credentials (hub/README.md, "Credentials"): `POST /v1/credentials`
//! makes one, `PUT /v1/credentials/{name}` rotates its fields or changes
//! whom it allows, `DELETE` removes it; `GET` reads metadata only. No
//! answer, error or log line here carries a value: refusals name the
//! field, and the audit entry of each change (in the change's own
//! transaction) names fields, never their text.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use tasuki_actions::language::credentials::{CredentialKind, MAX_NAME_CHARS};
use tasuki_actions::language::model::is_identifier;
use tasuki_protocol::robot::{MAX_LABELS, check_label, check_robot_name};
use tasuki_protocol::{
    CreateCredential, Credential, CredentialAllow, CredentialList, UpdateCredential,
};

use super::Hub;
use super::auth::{Authorized, need};
use super::body::JsonBody;
use super::error::ApiError;
use super::query::shorten;
use crate::db::credentials::{self, Change, Declared, ForSession, NewCredential};
use crate::db::workflow_names::{self, WorkflowIdentity};
use crate::db::{audit, now_ms};

/// Credentials a hub keeps at most.
const MAX_CREDENTIALS: u64 = 1000;
/// Robot names one credential may list.
const MAX_ALLOWED_ROBOTS: usize = 200;
const MAX_ALLOWED_WORKFLOWS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 500;

pub async fn create(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::CredentialWrite>,
    JsonBody(req): JsonBody<CreateCredential>,
) -> Result<(StatusCode, Json<Credential>), ApiError> {
    check_name(&req.name, "name")?;
    let kind = CredentialKind::parse(&req.kind).ok_or_else(|| {
        ApiError::invalid_field(
            "kind",
            format!(
                "`{}` is not a credential kind; the kinds are {}",
                shorten(&req.kind),
                CredentialKind::names()
            ),
        )
    })?;
    check_fields(kind, &req.fields)?;
    check_allow(&req.allow)?;
    let fields = in_kind_order(kind, req.fields);
    let description = req.description.unwrap_or_default();
    check_description(&description)?;
    let new = NewCredential {
        name: req.name,
        kind: kind.as_str().to_string(),
        fields,
        allow: req.allow,
        description,
    };
    let master = hub.master.clone();
    let actor = caller.key_id.clone();
    let made = hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                if let Err(e) = check_workflows_owned(tx, new.allow.workflows.as_deref())? {
                    return Ok(Err(e));
                }
                if credentials::count(tx)? >= MAX_CREDENTIALS {
                    return Ok(Err(ApiError::unprocessable(
                        "too_many_credentials",
                        format!("the hub has {MAX_CREDENTIALS} credentials, the most it keeps"),
                    )));
                }
                let now = now_ms();
                let Some(made) = credentials::insert(tx, &new, &master, &actor, now)? else {
                    return Ok(Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "credential_exists",
                        format!(
                            "there is a credential named `{}` already; rotate it with PUT \
                             /v1/credentials/{}",
                            new.name, new.name
                        ),
                    )));
                };
                let detail = json!({"name": made.name, "kind": made.kind, "fields": made.fields,
                                    "allow": made.allow, "version": made.version});
                let subject = format!("credential {}", made.name);
                audit::record(tx, &actor, "credential.create", &subject, detail, now)?;
                Ok(Ok(made))
            })
        })
        .await??;
    tracing::info!(credential = %made.name, kind = %made.kind, key_id = %caller.key_id, "credential created");
    reoffer(&hub, &made.name).await;
    Ok((StatusCode::CREATED, Json(made)))
}

pub async fn list(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::CredentialRead>,
) -> Result<Json<CredentialList>, ApiError> {
    let credentials = hub.db.call(credentials::list).await?;
    Ok(Json(CredentialList { credentials }))
}

pub async fn get_one(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::CredentialRead>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<Credential>, ApiError> {
    let name = name_in(name)?;
    let lookup = name.clone();
    hub.db
        .call(move |conn| credentials::get(conn, &lookup))
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&name))
}

pub async fn update(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::CredentialWrite>,
    name: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<UpdateCredential>,
) -> Result<Json<Credential>, ApiError> {
    let name = name_in(name)?;
    if req.fields.is_none() && req.allow.is_none() && req.description.is_none() {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "give at least one of `fields` (rotates the credential), `allow` or `description`",
        ));
    }
    if let Some(allow) = &req.allow {
        check_allow(&allow.applied_to(&CredentialAllow::default()))?;
    }
    if let Some(description) = &req.description {
        check_description(description)?;
    }
    let master = hub.master.clone();
    let actor = caller.key_id.clone();
    let lookup = name.clone();
    let changed = hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                // Locked: `allow.workflows` left out keeps what is stored,
                // which another change must not alter in between.
                let Some(current) = credentials::get_for_update(tx, &lookup)? else {
                    return Ok(Err(not_found(&lookup)));
                };
                // The kind stays: workflows declare it, and a rotation must
                // not break them.
                if let Some(fields) = &req.fields {
                    let kind = CredentialKind::parse(&current.kind).ok_or_else(|| {
                        crate::db::DbError::Corrupt(format!(
                            "credential {lookup}: unknown kind {}",
                            current.kind
                        ))
                    })?;
                    if let Err(e) = check_fields(kind, fields) {
                        return Ok(Err(e));
                    }
                }
                if let Some(Some(workflows)) = req.allow.as_ref().map(|a| &a.workflows)
                    && let Err(e) = check_workflows_owned(tx, workflows.as_deref())?
                {
                    return Ok(Err(e));
                }
                let kind = CredentialKind::parse(&current.kind);
                let change = Change {
                    fields: req.fields.zip(kind).map(|(f, k)| in_kind_order(k, f)),
                    allow: req.allow.map(|a| a.applied_to(&current.allow)),
                    description: req.description,
                };
                let now = now_ms();
                let Some(changed) =
                    credentials::update(tx, &lookup, &change, &master, &actor, now)?
                else {
                    return Ok(Err(not_found(&lookup)));
                };
                let mut detail = json!({"name": changed.name, "version": changed.version,
                                        "rotated": change.fields.is_some()});
                if let Some(allow) = &change.allow {
                    detail["allow"] = json!(allow);
                }
                if change.description.is_some() {
                    detail["description_changed"] = json!(true);
                }
                let action = if change.fields.is_some() {
                    "credential.rotate"
                } else {
                    "credential.update"
                };
                let subject = format!("credential {}", changed.name);
                audit::record(tx, &actor, action, &subject, detail, now)?;
                Ok(Ok(changed))
            })
        })
        .await??;
    tracing::info!(credential = %changed.name, version = changed.version, key_id = %caller.key_id, "credential changed");
    reoffer(&hub, &changed.name).await;
    Ok(Json(changed))
}

pub async fn delete(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::CredentialWrite>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = name_in(name)?;
    let actor = caller.key_id.clone();
    let lookup = name.clone();
    let deleted = hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                let deleted = credentials::delete(tx, &lookup)?;
                if deleted {
                    let subject = format!("credential {lookup}");
                    audit::record(
                        tx,
                        &actor,
                        "credential.delete",
                        &subject,
                        json!({"name": lookup}),
                        now_ms(),
                    )?;
                }
                Ok(deleted)
            })
        })
        .await?;
    if !deleted {
        return Err(not_found(&name));
    }
    tracing::info!(credential = %name, key_id = %caller.key_id, "credential deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Sessions waiting for the credential `name` (made, or allowing other
/// robots now) are offered to the robots waiting in a poll, as a new
/// session is; a robot not waiting finds them at its next poll anyway.
async fn reoffer(hub: &Arc<Hub>, name: &str) {
    /// Sessions offered again at most, per change.
    const MAX_REOFFERED: i64 = 1000;
    let (dispatch_hub, name) = (hub.clone(), name.to_string());
    let offered = hub
        .db
        .call(move |conn| {
            let now = now_ms();
            for id in credentials::queued_sessions_using(conn, &name, MAX_REOFFERED)? {
                super::sessions::offer(conn, &dispatch_hub, id, now);
            }
            Ok(())
        })
        .await;
    if let Err(e) = offered {
        tracing::warn!(error = %e, "offering the sessions that wait for a credential");
    }
}

/// A session of `workflow` is refused while a credential it uses
/// (`declared`, with the hub's `stored` credentials of those names) does
/// not exist, is of another kind than the workflow declares, or does not
/// allow the workflow: it could never run. (A credential deleted after the
/// session was queued keeps it queued, with `queued_reason` saying why.)
pub fn check_for_session(
    workflow: &WorkflowIdentity,
    declared: &[Declared],
    stored: &BTreeMap<String, ForSession>,
) -> Result<(), ApiError> {
    for d in declared {
        let credential = stored.get(&d.name);
        if let Some(c) = credential
            && !workflow.may_receive(c.workflows.as_deref())
        {
            // Which workflows it allows is not said: a caller that may
            // queue sessions need not learn the names.
            return Err(ApiError::unprocessable(
                "credential_not_allowed",
                format!(
                    "the credential `{}` does not allow the sessions of this workflow (`{}`): \
                     its `allow.workflows` lists the workflows it reaches, each of them \
                     registered by the key that owns its name",
                    d.name,
                    shorten(&workflow.name)
                ),
            ));
        }
        match credential.map(|c| c.kind.as_str()) {
            None => {
                return Err(ApiError::unprocessable(
                    "unknown_credential",
                    format!(
                        "the workflow uses the credential `{}` ({}), which this hub does not \
                         have; make it with POST /v1/credentials",
                        d.name, d.kind
                    ),
                ));
            }
            Some(kind) if kind != d.kind => {
                return Err(ApiError::unprocessable(
                    "credential_kind_mismatch",
                    format!(
                        "the workflow declares the credential `{}` as {}, and the hub's is {}",
                        d.name, d.kind, kind
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn check_name(name: &str, path: &str) -> Result<(), ApiError> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            path,
            format!(
                "a credential name starts with a letter or `_`, holds only letters, digits, `_` \
                 and `-`, and has at most {MAX_NAME_CHARS} characters (workflows read it as \
                 `${{credentials.NAME.FIELD}}`)"
            ),
        ))
    }
}

/// Exactly the kind's fields, each non-empty text within the kind's size.
/// Messages give sizes and types, never the text.
fn check_fields(kind: CredentialKind, fields: &Map<String, Value>) -> Result<(), ApiError> {
    let expected = kind.fields();
    for key in fields.keys() {
        if !expected.contains(&key.as_str()) {
            return Err(ApiError::invalid_field(
                &format!("fields.{}", shorten(key)),
                format!(
                    "a `{}` credential has no such field; its fields are {}",
                    kind.as_str(),
                    expected.join(", ")
                ),
            ));
        }
    }
    for field in expected {
        let path = format!("fields.{field}");
        match fields.get(*field) {
            None => {
                return Err(ApiError::invalid_field(
                    &path,
                    format!(
                        "missing; a `{}` credential has the fields {}",
                        kind.as_str(),
                        expected.join(", ")
                    ),
                ));
            }
            Some(Value::String(text)) if text.is_empty() => {
                return Err(ApiError::invalid_field(&path, "must not be empty"));
            }
            Some(Value::String(text)) if text.len() > kind.max_field_bytes() => {
                return Err(ApiError::invalid_field(
                    &path,
                    format!(
                        "{} bytes; at most {} for a `{}` credential",
                        text.len(),
                        kind.max_field_bytes(),
                        kind.as_str()
                    ),
                ));
            }
            Some(Value::String(_)) => {}
            Some(_) => return Err(ApiError::invalid_field(&path, "expected text")),
        }
    }
    Ok(())
}

/// The fields in the order the kind lists them (`username`, `password`),
/// whatever the request's: so metadata reads the same after a rotation.
fn in_kind_order(kind: CredentialKind, mut fields: Map<String, Value>) -> Map<String, Value> {
    kind.fields()
        .iter()
        .filter_map(|f| fields.remove(*f).map(|v| ((*f).to_string(), v)))
        .collect()
}

/// Each workflow name a credential lists must belong to a key already:
/// a name nobody has registered would go to whoever registers it first,
/// and with it the credential.
fn check_workflows_owned(
    conn: &mut crate::db::Conn<'_>,
    names: Option<&[String]>,
) -> Result<Result<(), ApiError>, crate::db::DbError> {
    for (i, name) in names.unwrap_or_default().iter().enumerate() {
        if !workflow_names::is_owned(conn, name)? {
            return Ok(Err(ApiError::invalid_field(
                &format!("allow.workflows[{i}]"),
                format!(
                    "no workflow is registered under the name `{}` on this hub; register it \
                     first, so that the name belongs to a key (whoever registered it first \
                     would otherwise get the credential)",
                    shorten(name)
                ),
            )));
        }
    }
    Ok(Ok(()))
}

fn check_allow(allow: &CredentialAllow) -> Result<(), ApiError> {
    if allow.robots.len() > MAX_ALLOWED_ROBOTS {
        return Err(ApiError::invalid_field(
            "allow.robots",
            format!("at most {MAX_ALLOWED_ROBOTS} robot names"),
        ));
    }
    for (i, name) in allow.robots.iter().enumerate() {
        check_robot_name(name)
            .map_err(|e| ApiError::invalid_field(&format!("allow.robots[{i}]"), e))?;
    }
    if allow.labels.len() > MAX_LABELS {
        return Err(ApiError::invalid_field(
            "allow.labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (i, label) in allow.labels.iter().enumerate() {
        check_label(label)
            .map_err(|e| ApiError::invalid_field(&format!("allow.labels[{i}]"), e))?;
    }
    let workflows = allow.workflows.as_deref().unwrap_or_default();
    if workflows.len() > MAX_ALLOWED_WORKFLOWS {
        return Err(ApiError::invalid_field(
            "allow.workflows",
            format!("at most {MAX_ALLOWED_WORKFLOWS} workflow names"),
        ));
    }
    for (i, name) in workflows.iter().enumerate() {
        let path = format!("allow.workflows[{i}]");
        if name.trim().is_empty() || name.chars().count() > super::workflows::MAX_NAME_CHARS {
            return Err(ApiError::invalid_field(
                &path,
                format!(
                    "a workflow name of 1 to {} characters, not only spaces",
                    super::workflows::MAX_NAME_CHARS
                ),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(ApiError::invalid_field(
                &path,
                "a workflow name holds no control characters",
            ));
        }
        if workflows[..i].contains(name) {
            return Err(ApiError::invalid_field(
                &path,
                format!("`{}` is listed twice", shorten(name)),
            ));
        }
    }
    Ok(())
}

fn check_description(description: &str) -> Result<(), ApiError> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::invalid_field(
            "description",
            format!("at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(())
}

fn name_in(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = name.map_err(|_| {
        ApiError::bad_request("invalid_path", "the path names no credential".to_string())
    })?;
    if !is_identifier(&name) {
        return Err(not_found(&name));
    }
    Ok(name)
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "credential_not_found",
        format!("there is no credential named `{}`", shorten(name)),
    )
}
