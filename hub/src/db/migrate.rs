//! Schema migrations, one list per engine, with the same version numbers:
//! version N is the same tables, columns and rules on both. Each entry
//! moves the schema one version up and runs in its own transaction;
//! entries are never edited once released, only appended (to both lists).
//!
//! SQLite keeps its version in `PRAGMA user_version`. PostgreSQL, which
//! came at version 8, starts there with the whole schema in one entry and
//! keeps its version in `tasuki_schema`; hubs that start together take
//! turns through an advisory lock.

use rusqlite::Connection;

use super::DbError;
use super::sql::{Conn, Dialect, params};

const MIGRATIONS: &[&str] = &[
    // 1: the public API.
    r#"
    CREATE TABLE access_keys (
        id            TEXT PRIMARY KEY,
        scopes        TEXT NOT NULL,
        -- The secret sealed with ChaCha20-Poly1305 under the master key in
        -- <db>.key; the key id is the associated data, so a sealed secret
        -- copied onto another row does not open.
        secret_nonce  BLOB NOT NULL,
        secret_sealed BLOB NOT NULL,
        created_at    INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE robots (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        name       TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE workflows (
        id                  INTEGER PRIMARY KEY AUTOINCREMENT,
        name                TEXT NOT NULL,
        description         TEXT NOT NULL,
        single_process_mode INTEGER NOT NULL,
        source_format       TEXT NOT NULL CHECK (source_format IN ('yaml', 'json')),
        source              TEXT NOT NULL,
        -- JSON: [{name, default?, secret}], so that queueing a session
        -- checks params without parsing the workflow again.
        param_specs         TEXT NOT NULL,
        -- JSON array of robot names; empty means any robot.
        workflow_robots     TEXT NOT NULL,
        created_at          INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE session_queues (
        id                  INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_id         INTEGER NOT NULL REFERENCES workflows(id),
        status              TEXT NOT NULL
            CHECK (status IN ('queued', 'running', 'success', 'error', 'cancelled')),
        -- JSON object, as the caller gave it.
        params              TEXT NOT NULL,
        -- JSON array of the param names shown as *** in responses.
        secret_params       TEXT NOT NULL,
        robot_id            INTEGER REFERENCES robots(id),
        created_at          INTEGER NOT NULL,
        started_at          INTEGER,
        ended_at            INTEGER,
        cancel_requested_at INTEGER,
        steps               TEXT,
        error               TEXT,
        outputs             TEXT
    ) STRICT;
    CREATE INDEX session_queues_by_created ON session_queues (created_at, id);
    CREATE INDEX session_queues_by_status ON session_queues (status, created_at);

    CREATE TABLE session_logs (
        session_id INTEGER NOT NULL REFERENCES session_queues(id),
        seq        INTEGER NOT NULL CHECK (seq >= 1),
        ts         INTEGER NOT NULL,
        level      TEXT NOT NULL,
        step_id    TEXT,
        message    TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 2: the robot protocol: robot details and heartbeats, leases, step
    // revisions, finish keys, and artifacts.
    r#"
    ALTER TABLE robots ADD COLUMN instance_id TEXT NOT NULL DEFAULT '';
    -- The access key that registered the robot; only it may act for it.
    ALTER TABLE robots ADD COLUMN key_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE robots ADD COLUMN labels TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE robots ADD COLUMN version TEXT NOT NULL DEFAULT '';
    ALTER TABLE robots ADD COLUMN max_concurrency INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE robots ADD COLUMN host TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE robots ADD COLUMN metrics TEXT;
    ALTER TABLE robots ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE robots ADD COLUMN last_seen_at INTEGER;

    -- A lease: robot_id and lease_id set. Offered while the status is
    -- `queued` and lease_acked is 0 (it expires at the ack deadline);
    -- held while `running` (it expires unless renewed). A finished
    -- session keeps its lease_id so that late logs still match.
    ALTER TABLE session_queues ADD COLUMN lease_id TEXT;
    ALTER TABLE session_queues ADD COLUMN lease_poll_id TEXT;
    ALTER TABLE session_queues ADD COLUMN lease_acked INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE session_queues ADD COLUMN lease_expires_at INTEGER;
    ALTER TABLE session_queues ADD COLUMN steps_revision INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE session_queues ADD COLUMN finish_key TEXT;
    CREATE INDEX session_queues_by_lease_expiry ON session_queues (lease_expires_at)
        WHERE lease_expires_at IS NOT NULL;
    CREATE INDEX session_queues_by_robot ON session_queues (robot_id, status);

    CREATE TABLE session_artifacts (
        session_id   INTEGER NOT NULL REFERENCES session_queues(id),
        name         TEXT NOT NULL,
        sha256       TEXT NOT NULL,
        content_type TEXT NOT NULL,
        data         BLOB NOT NULL,
        created_at   INTEGER NOT NULL,
        PRIMARY KEY (session_id, name)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 3: a lease is acknowledged by the poll it answers (docs/protocol.md):
    // the session is `running` from the moment its lease is sent, and
    // lease_confirmed says whether a later poll of the robot has listed it
    // (until then the lease can still be taken back). Offers the earlier
    // protocol left unacknowledged go back to the queue.
    r#"
    UPDATE session_queues
    SET lease_id = NULL, lease_poll_id = NULL, robot_id = NULL, lease_expires_at = NULL
    WHERE status = 'queued' AND lease_id IS NOT NULL;
    ALTER TABLE session_queues RENAME COLUMN lease_acked TO lease_confirmed;
    "#,
    // 4: a robot belongs to the key that registered it, and moves to
    // another key only by an operator's `tasuki-hub robots transfer`, which
    // records the key it came from (so that key's agent is told why it is
    // refused). Robots are counted per key for the quota and the limit.
    r#"
    ALTER TABLE robots ADD COLUMN moved_from_key_id TEXT;
    CREATE INDEX robots_by_key ON robots (key_id);
    "#,
    // 5: secret params at rest (db/secret_params.rs). `params` holds `***`
    // for each secret value and `secrets_sealed` the values, sealed with
    // the master key; the trigger drops them the moment a session ends,
    // whichever way it ends. Rows stored in clear before this version are
    // flagged, and sealed (or, ended, purged) at the next start, when the
    // master key is at hand.
    r#"
    ALTER TABLE session_queues ADD COLUMN secrets_sealed BLOB;
    ALTER TABLE session_queues ADD COLUMN secrets_in_clear INTEGER NOT NULL DEFAULT 0;
    UPDATE session_queues SET secrets_in_clear = 1 WHERE secret_params != '[]';
    CREATE INDEX session_queues_secrets_in_clear ON session_queues (id)
        WHERE secrets_in_clear = 1;
    CREATE TRIGGER session_queues_purge_secrets
    AFTER UPDATE OF status ON session_queues
    WHEN NEW.status IN ('success', 'error', 'cancelled') AND NEW.secrets_sealed IS NOT NULL
    BEGIN
        UPDATE session_queues SET secrets_sealed = NULL WHERE id = NEW.id;
    END;
    "#,
    // 6: a robot an operator deleted (`tasuki-hub robots delete`) stays
    // deleted: its machine's instance id is remembered, and that machine's
    // agent is refused (`robot_deleted`) instead of registering it again,
    // until its operator registers it again with `tasuki register --replace`.
    r#"
    CREATE TABLE retired_instances (
        instance_id TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        name        TEXT NOT NULL,
        at          INTEGER NOT NULL,
        PRIMARY KEY (instance_id, key_id, name)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 7: purged secret params are counted, so that the hub can checkpoint
    // the write-ahead log (which still holds the sealed values' old pages)
    // only when there is something to wipe (serve.rs).
    r#"
    CREATE TABLE secret_purges (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        count INTEGER NOT NULL
    ) STRICT;
    INSERT INTO secret_purges (id, count) VALUES (1, 0);
    DROP TRIGGER session_queues_purge_secrets;
    CREATE TRIGGER session_queues_purge_secrets
    AFTER UPDATE OF status ON session_queues
    WHEN NEW.status IN ('success', 'error', 'cancelled') AND NEW.secrets_sealed IS NOT NULL
    BEGIN
        UPDATE session_queues SET secrets_sealed = NULL WHERE id = NEW.id;
        UPDATE secret_purges SET count = count + 1 WHERE id = 1;
    END;
    "#,
    // 8: routing by what robots offer (docs/protocol.md, *The action
    // catalog*). `robots.actions` is the catalog a robot sent at its last
    // registration (JSON [{name, pack?, version, schema_sha256}]), NULL for
    // an agent older than catalogs, whose actions are unknown and not
    // filtered on. `workflows.required_actions` lists the actions the
    // workflow's steps use (control flow left out), computed at upload;
    // workflows stored before this version list none, as they were checked
    // against the built-ins only. `workflows.robot_labels` lists the labels
    // a robot must carry to run the workflow.
    r#"
    ALTER TABLE robots ADD COLUMN actions TEXT;
    ALTER TABLE workflows ADD COLUMN required_actions TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE workflows ADD COLUMN robot_labels TEXT NOT NULL DEFAULT '[]';
    "#,
    // 9: the robot's latest poll, as `<hub> <number>`, written at its
    // start with the robot's row locked: a poll still registered on some
    // hub is given a session only while it is the latest (dispatch.rs).
    r#"
    ALTER TABLE robots ADD COLUMN poll_token TEXT;
    "#,
    // 10: public API calls per access key and clock minute, summed over
    // the hubs of a shared database (db/api_calls.rs); a lone SQLite hub
    // counts in memory and leaves it empty.
    r#"
    CREATE TABLE api_calls (
        key_id TEXT NOT NULL,
        minute INTEGER NOT NULL,
        calls  INTEGER NOT NULL,
        PRIMARY KEY (key_id, minute)
    ) STRICT;
    "#,
    // 11: schedules (db/schedules.rs), and where a session the hub queued
    // itself came from: a schedule's run due at `scheduled_for`, or a
    // re-run of another session; sessions by start time (/metrics).
    r#"
    CREATE TABLE schedules (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_id      INTEGER NOT NULL REFERENCES workflows(id),
        cron             TEXT NOT NULL,
        timezone         TEXT NOT NULL,
        -- JSON, secret values as ***; the values sealed in secrets_sealed
        -- (the schedule id as associated data).
        params           TEXT NOT NULL,
        secret_params    TEXT NOT NULL,
        secrets_sealed   BLOB,
        overlap          TEXT NOT NULL CHECK (overlap IN ('skip', 'queue', 'cancel_previous')),
        missed           TEXT NOT NULL CHECK (missed IN ('run_once', 'skip')),
        enabled          INTEGER NOT NULL,
        -- The next run's time; NULL while paused (or when it names none).
        next_due_at      INTEGER,
        -- A run due while the previous session ran (overlap = queue).
        waiting          INTEGER NOT NULL DEFAULT 0,
        last_due_at      INTEGER,
        last_outcome     TEXT,
        last_session_id  INTEGER,
        created_at       INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX schedules_due ON schedules (next_due_at) WHERE enabled = 1;
    ALTER TABLE session_queues ADD COLUMN schedule_id INTEGER;
    ALTER TABLE session_queues ADD COLUMN scheduled_for INTEGER;
    ALTER TABLE session_queues ADD COLUMN rerun_of INTEGER;
    -- A failed session's error handler (db/error_handlers.rs): the
    -- workflow queued when one of this workflow's sessions ends in error,
    -- the handler's session a failed one got, and the failed session a
    -- handler's session handles.
    ALTER TABLE workflows ADD COLUMN error_handler_workflow_id INTEGER;
    ALTER TABLE session_queues ADD COLUMN handler_session INTEGER;
    ALTER TABLE session_queues ADD COLUMN handles_session INTEGER;
    CREATE INDEX session_queues_failed ON session_queues (ended_at) WHERE status = 'error';
    -- Webhook triggers (db/triggers.rs): a URL whose signed requests queue
    -- a session of the workflow, their params taken from the request's
    -- JSON by `mapping`; the signing secret sealed (the trigger's id as
    -- associated data); the signatures taken lately, refused again.
    CREATE TABLE triggers (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_id   INTEGER NOT NULL REFERENCES workflows(id),
        mapping       TEXT NOT NULL,
        secret_sealed BLOB NOT NULL,
        created_at    INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE trigger_deliveries (
        trigger_id INTEGER NOT NULL,
        signature  TEXT NOT NULL,
        at         INTEGER NOT NULL,
        PRIMARY KEY (trigger_id, signature)
    ) STRICT;
    ALTER TABLE session_queues ADD COLUMN trigger_id INTEGER;
    -- Notifications out (db/notifications.rs): where to POST a signed event
    -- when a session (of one workflow, or any) ends, and each delivery with
    -- its attempts; `notified` marks a session whose events are made.
    CREATE TABLE notifications (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_id   INTEGER REFERENCES workflows(id),
        url           TEXT NOT NULL,
        events        TEXT NOT NULL,
        secret_sealed BLOB NOT NULL,
        created_at    INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE notification_deliveries (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        notification_id  INTEGER NOT NULL,
        session_id       INTEGER,
        event            TEXT NOT NULL,
        payload          TEXT NOT NULL,
        status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  INTEGER NOT NULL,
        last_status_code INTEGER,
        last_error       TEXT,
        created_at       INTEGER NOT NULL,
        delivered_at     INTEGER
    ) STRICT;
    CREATE INDEX notification_deliveries_due ON notification_deliveries (next_attempt_at)
        WHERE status = 'pending';
    CREATE INDEX notification_deliveries_of ON notification_deliveries (notification_id, id);
    ALTER TABLE session_queues ADD COLUMN notified INTEGER;
    -- Sessions that ended before notifications existed make no events.
    UPDATE session_queues SET notified = 1 WHERE ended_at IS NOT NULL;
    CREATE INDEX session_queues_unnotified ON session_queues (ended_at) WHERE notified IS NULL;
    -- Who changed what (db/audit.rs): an access key id, or `operator` for
    -- the command line on the hub's machine.
    CREATE TABLE audit_log (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         INTEGER NOT NULL,
        actor      TEXT NOT NULL,
        action     TEXT NOT NULL,
        subject    TEXT NOT NULL,
        detail     TEXT NOT NULL
    ) STRICT;
    CREATE INDEX session_queues_schedule ON session_queues (schedule_id)
        WHERE schedule_id IS NOT NULL;
    -- /metrics reads the pickups of the last minutes.
    CREATE INDEX session_queues_started ON session_queues (started_at)
        WHERE started_at IS NOT NULL;
    "#,
    // 12: concurrency policies (db/concurrency.rs): at most
    // `concurrency_limit` sessions of a workflow run at once, per value of
    // its param `concurrency_key_param` when it has one, which each session
    // keeps as `concurrency_key` ('' without one).
    r#"
    ALTER TABLE workflows ADD COLUMN concurrency_limit INTEGER;
    ALTER TABLE workflows ADD COLUMN concurrency_on_limit TEXT;
    ALTER TABLE workflows ADD COLUMN concurrency_key_param TEXT;
    ALTER TABLE session_queues ADD COLUMN concurrency_key TEXT NOT NULL DEFAULT '';
    CREATE INDEX session_queues_concurrency
        ON session_queues (workflow_id, concurrency_key, status)
        WHERE status IN ('queued', 'running');
    "#,
    // 13: a workflow that takes params it does not declare
    // (`accept_undeclared_params: true`, api/params.rs): 0 or 1.
    r#"
    ALTER TABLE workflows ADD COLUMN accept_undeclared_params INTEGER NOT NULL DEFAULT 0;
    "#,
    // 14: named credentials (db/credentials.rs). Their fields are sealed
    // with the master key, the credential's id and version as associated
    // data, so a blob copied onto another row, or back from an older
    // version, does not open. `allow_robots` and `allow_labels` (JSON
    // lists) say which robots may receive it. `workflows.credentials` is
    // what a workflow declares under `credentials:` (JSON [{name, kind}]),
    // read at registration; workflows stored before this version use none.
    r#"
    CREATE TABLE credentials (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        name          TEXT NOT NULL UNIQUE,
        kind          TEXT NOT NULL,
        field_names   TEXT NOT NULL,
        fields_sealed BLOB NOT NULL,
        allow_robots  TEXT NOT NULL,
        allow_labels  TEXT NOT NULL,
        description   TEXT NOT NULL,
        version       INTEGER NOT NULL,
        created_at    INTEGER NOT NULL,
        created_by    TEXT NOT NULL,
        updated_at    INTEGER NOT NULL,
        updated_by    TEXT NOT NULL
    ) STRICT;
    ALTER TABLE workflows ADD COLUMN credentials TEXT NOT NULL DEFAULT '[]';
    "#,
    // 15: the number of the poll a lease was sent to (`poll_seq` in the
    // robot protocol; NULL from robots that send none): a later poll that
    // does not list an unconfirmed lease of a lower number takes it back
    // (leases::withdraw_unlisted).
    r#"
    ALTER TABLE session_queues ADD COLUMN lease_poll_seq INTEGER;
    "#,
    // 16: `retry_on` (leases::requeue_for_retry): a workflow's list of the
    // ends after which its sessions are queued again; a session's
    // `attempt` (1 for its first run); and `log_seq_base`, the stored
    // log's last line before the attempt under way, whose robot numbers
    // its lines from 1 again; `log_cut_at`, the line of the hub's note
    // where a log that reached a limit was cut (api/session_limits.rs);
    // and a workflow's `limits.log_bytes`.
    r#"
    ALTER TABLE workflows ADD COLUMN retry_on TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE session_queues ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE session_queues ADD COLUMN log_seq_base INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE session_queues ADD COLUMN log_cut_at INTEGER;
    ALTER TABLE workflows ADD COLUMN limit_log_bytes INTEGER;
    "#,
    // 17: waiting sessions (db/waits.rs). A session's status may be
    // `waiting`; SQLite cannot alter a CHECK, so its text in the schema is
    // widened in place (SQLite's documented way for a change that
    // existing rows already satisfy: sqlite.org/lang_altertable.html,
    // "making other kinds of table schema changes"), and the DDL after it
    // makes every connection read the schema again.
    r#"
    PRAGMA writable_schema = ON;
    UPDATE sqlite_schema
    SET sql = replace(sql,
        'CHECK (status IN (''queued'', ''running'', ''success'', ''error'', ''cancelled''))',
        'CHECK (status IN (''queued'', ''running'', ''waiting'', ''success'', ''error'', ''cancelled''))')
    WHERE type = 'table' AND name = 'session_queues';
    PRAGMA writable_schema = OFF;
    CREATE TABLE session_waits (
        session_id INTEGER PRIMARY KEY REFERENCES session_queues(id),
        step_id    TEXT NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('approval', 'event')),
        message    TEXT,
        event      TEXT,
        since      INTEGER NOT NULL,
        deadline   INTEGER NOT NULL,
        on_timeout TEXT NOT NULL CHECK (on_timeout IN ('approve', 'reject')),
        -- Sealed with the master key, `checkpoint:<session id>` as the
        -- associated data: it holds the session's variables. Gone (NULL)
        -- once the session ends, by the trigger below.
        checkpoint BLOB,
        -- An event's signing key (`wait_event`'s `secret`), sealed with
        -- `callback:<session id>`; gone with the checkpoint.
        callback_secret BLOB,
        -- JSON, the robot protocol's WaitOutcome, once answered.
        outcome    TEXT,
        decided_by TEXT,
        decided_at INTEGER,
        comment    TEXT
    ) STRICT;
    CREATE INDEX session_waits_due ON session_waits (deadline) WHERE outcome IS NULL;
    CREATE TRIGGER session_waits_purge_checkpoint
    AFTER UPDATE OF status ON session_queues
    WHEN NEW.status IN ('success', 'error', 'cancelled')
    BEGIN
        UPDATE session_waits SET checkpoint = NULL, callback_secret = NULL
        WHERE session_id = NEW.id AND checkpoint IS NOT NULL;
    END;
    -- A workflow's `limits.artifact_bytes` (api/session_limits.rs), and the
    -- names its `call` steps run (JSON; db/workflows.rs `calls_of`).
    ALTER TABLE workflows ADD COLUMN limit_artifact_bytes INTEGER;
    ALTER TABLE workflows ADD COLUMN calls TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX workflows_by_name ON workflows (name, id);
    -- When the run under way was leased (a resumed session's started_at
    -- is its first run's), and why the hub asked a cancel (`duration`:
    -- --max-session-duration; NULL: someone asked).
    ALTER TABLE session_queues ADD COLUMN run_started_at INTEGER;
    ALTER TABLE session_queues ADD COLUMN cancel_reason TEXT;
    "#,
    // 18: which reading of a workflow's params its `param_specs` hold: 0
    // from before params had types (`type`, `choices`), which the hub
    // reads again once (db/workflows.rs `refresh_param_specs`).
    r#"
    ALTER TABLE workflows ADD COLUMN params_read INTEGER NOT NULL DEFAULT 0;
    "#,
    // 19: the access key ids that may decide an approval (its step's
    // `approvers`, JSON; `[]`: any key that may write sessions).
    r#"
    ALTER TABLE session_waits ADD COLUMN approvers TEXT NOT NULL DEFAULT '[]';
    "#,
    // 20: a workflow name belongs to the access key that first registered
    // it, and a workflow counts as its name's only if registered by that
    // key (db/workflow_names.rs). Workflows from before are their
    // registrant's, and names their first known registrant's, as the
    // audit log says (a name none of whose workflows it names stays
    // unowned until the operator gives it an owner).
    r#"
    ALTER TABLE workflows ADD COLUMN registered_by TEXT;
    UPDATE workflows SET registered_by = created.actor
    FROM (SELECT subject, MIN(actor) AS actor FROM audit_log
          WHERE action = 'workflow.create' GROUP BY subject) AS created
    WHERE created.subject = 'workflow ' || workflows.id;
    CREATE TABLE workflow_names (
        name   TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        since  INTEGER NOT NULL
    ) STRICT;
    INSERT INTO workflow_names (name, key_id, since)
    SELECT w.name, w.registered_by, w.created_at FROM workflows w
    WHERE w.id = (SELECT MIN(o.id) FROM workflows o
                  WHERE o.name = w.name AND o.registered_by IS NOT NULL);
    "#,
    // 21: the workflows a credential allows (JSON list of names; NULL: any
    // workflow that declares it).
    r#"
    ALTER TABLE credentials ADD COLUMN allow_workflows TEXT;
    "#,
    // 22: the labels the robots of an access key may carry (JSON list;
    // NULL: any), set by `keys create --robot-labels`.
    r#"
    ALTER TABLE access_keys ADD COLUMN robot_labels TEXT;
    "#,
];

/// PostgreSQL's schema: the version each entry brings it to, and the SQL.
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    // 8: everything SQLite's versions 1 to 8 made. Integers are BIGINT and
    // flags BIGINT 0/1 (the statements are shared: `draining = 1` reads
    // the same on both), JSON is TEXT as on SQLite.
    (
        8,
        r#"
    CREATE TABLE access_keys (
        id            TEXT PRIMARY KEY,
        scopes        TEXT NOT NULL,
        secret_nonce  BYTEA NOT NULL,
        secret_sealed BYTEA NOT NULL,
        created_at    BIGINT NOT NULL
    );

    CREATE TABLE robots (
        id                BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name              TEXT NOT NULL UNIQUE,
        created_at        BIGINT NOT NULL,
        instance_id       TEXT NOT NULL DEFAULT '',
        key_id            TEXT NOT NULL DEFAULT '',
        labels            TEXT NOT NULL DEFAULT '[]',
        version           TEXT NOT NULL DEFAULT '',
        max_concurrency   BIGINT NOT NULL DEFAULT 1,
        host              TEXT NOT NULL DEFAULT '{}',
        metrics           TEXT,
        draining          BIGINT NOT NULL DEFAULT 0,
        last_seen_at      BIGINT,
        moved_from_key_id TEXT,
        actions           TEXT
    );
    CREATE INDEX robots_by_key ON robots (key_id);

    CREATE TABLE workflows (
        id                  BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name                TEXT NOT NULL,
        description         TEXT NOT NULL,
        single_process_mode BIGINT NOT NULL,
        source_format       TEXT NOT NULL CHECK (source_format IN ('yaml', 'json')),
        source              TEXT NOT NULL,
        param_specs         TEXT NOT NULL,
        workflow_robots     TEXT NOT NULL,
        created_at          BIGINT NOT NULL,
        required_actions    TEXT NOT NULL DEFAULT '[]',
        robot_labels        TEXT NOT NULL DEFAULT '[]'
    );

    CREATE TABLE session_queues (
        id                  BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        workflow_id         BIGINT NOT NULL REFERENCES workflows(id),
        status              TEXT NOT NULL
            CHECK (status IN ('queued', 'running', 'success', 'error', 'cancelled')),
        params              TEXT NOT NULL,
        secret_params       TEXT NOT NULL,
        robot_id            BIGINT REFERENCES robots(id),
        created_at          BIGINT NOT NULL,
        started_at          BIGINT,
        ended_at            BIGINT,
        cancel_requested_at BIGINT,
        steps               TEXT,
        error               TEXT,
        outputs             TEXT,
        lease_id            TEXT,
        lease_poll_id       TEXT,
        lease_confirmed     BIGINT NOT NULL DEFAULT 0,
        lease_expires_at    BIGINT,
        steps_revision      BIGINT NOT NULL DEFAULT 0,
        finish_key          TEXT,
        secrets_sealed      BYTEA,
        secrets_in_clear    BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX session_queues_by_created ON session_queues (created_at, id);
    CREATE INDEX session_queues_by_status ON session_queues (status, created_at);
    CREATE INDEX session_queues_by_lease_expiry ON session_queues (lease_expires_at)
        WHERE lease_expires_at IS NOT NULL;
    CREATE INDEX session_queues_by_robot ON session_queues (robot_id, status);
    CREATE INDEX session_queues_secrets_in_clear ON session_queues (id)
        WHERE secrets_in_clear = 1;

    CREATE TABLE session_logs (
        session_id BIGINT NOT NULL REFERENCES session_queues(id),
        seq        BIGINT NOT NULL CHECK (seq >= 1),
        ts         BIGINT NOT NULL,
        level      TEXT NOT NULL,
        step_id    TEXT,
        message    TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    );

    CREATE TABLE session_artifacts (
        session_id   BIGINT NOT NULL REFERENCES session_queues(id),
        name         TEXT NOT NULL,
        sha256       TEXT NOT NULL,
        content_type TEXT NOT NULL,
        data         BYTEA NOT NULL,
        created_at   BIGINT NOT NULL,
        PRIMARY KEY (session_id, name)
    );

    CREATE TABLE retired_instances (
        instance_id TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        name        TEXT NOT NULL,
        at          BIGINT NOT NULL,
        PRIMARY KEY (instance_id, key_id, name)
    );

    CREATE TABLE secret_purges (
        id    BIGINT PRIMARY KEY CHECK (id = 1),
        count BIGINT NOT NULL
    );
    INSERT INTO secret_purges (id, count) VALUES (1, 0);

    -- A session's sealed secret params go the moment it ends, whichever
    -- way it ends (SQLite's trigger of the same name).
    -- (SQLite's also counts purges, for its write-ahead log's wipe; there
    -- is no such file here, and one counter row would make every ending
    -- session wait for the others.)
    CREATE FUNCTION session_queues_purge_secrets() RETURNS trigger AS $$
    BEGIN
        NEW.secrets_sealed := NULL;
        RETURN NEW;
    END
    $$ LANGUAGE plpgsql;
    CREATE TRIGGER session_queues_purge_secrets
    BEFORE UPDATE OF status ON session_queues
    FOR EACH ROW
    WHEN (NEW.status IN ('success', 'error', 'cancelled') AND NEW.secrets_sealed IS NOT NULL)
    EXECUTE FUNCTION session_queues_purge_secrets();
    "#,
    ),
    (
        9,
        r#"
    ALTER TABLE robots ADD COLUMN poll_token TEXT;
    "#,
    ),
    (
        10,
        // Unlogged: counts of the current minute need not survive a crash
        // of the server, and are written on every hub's every sync.
        r#"
    CREATE UNLOGGED TABLE api_calls (
        key_id TEXT NOT NULL,
        minute BIGINT NOT NULL,
        calls  BIGINT NOT NULL,
        PRIMARY KEY (key_id, minute)
    );
    "#,
    ),
    (
        11,
        r#"
    CREATE TABLE schedules (
        id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        workflow_id      BIGINT NOT NULL REFERENCES workflows(id),
        cron             TEXT NOT NULL,
        timezone         TEXT NOT NULL,
        params           TEXT NOT NULL,
        secret_params    TEXT NOT NULL,
        secrets_sealed   BYTEA,
        overlap          TEXT NOT NULL CHECK (overlap IN ('skip', 'queue', 'cancel_previous')),
        missed           TEXT NOT NULL CHECK (missed IN ('run_once', 'skip')),
        enabled          BIGINT NOT NULL,
        next_due_at      BIGINT,
        waiting          BIGINT NOT NULL DEFAULT 0,
        last_due_at      BIGINT,
        last_outcome     TEXT,
        last_session_id  BIGINT,
        created_at       BIGINT NOT NULL
    );
    CREATE INDEX schedules_due ON schedules (next_due_at) WHERE enabled = 1;
    ALTER TABLE session_queues ADD COLUMN schedule_id BIGINT;
    ALTER TABLE session_queues ADD COLUMN scheduled_for BIGINT;
    ALTER TABLE session_queues ADD COLUMN rerun_of BIGINT;
    ALTER TABLE workflows ADD COLUMN error_handler_workflow_id BIGINT;
    ALTER TABLE session_queues ADD COLUMN handler_session BIGINT;
    ALTER TABLE session_queues ADD COLUMN handles_session BIGINT;
    CREATE INDEX session_queues_failed ON session_queues (ended_at) WHERE status = 'error';
    CREATE TABLE triggers (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        workflow_id   BIGINT NOT NULL REFERENCES workflows(id),
        mapping       TEXT NOT NULL,
        secret_sealed BYTEA NOT NULL,
        created_at    BIGINT NOT NULL
    );
    CREATE TABLE trigger_deliveries (
        trigger_id BIGINT NOT NULL,
        signature  TEXT NOT NULL,
        at         BIGINT NOT NULL,
        PRIMARY KEY (trigger_id, signature)
    );
    ALTER TABLE session_queues ADD COLUMN trigger_id BIGINT;
    CREATE TABLE notifications (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        workflow_id   BIGINT REFERENCES workflows(id),
        url           TEXT NOT NULL,
        events        TEXT NOT NULL,
        secret_sealed BYTEA NOT NULL,
        created_at    BIGINT NOT NULL
    );
    CREATE TABLE notification_deliveries (
        id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        notification_id  BIGINT NOT NULL,
        session_id       BIGINT,
        event            TEXT NOT NULL,
        payload          TEXT NOT NULL,
        status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
        attempts         BIGINT NOT NULL DEFAULT 0,
        next_attempt_at  BIGINT NOT NULL,
        last_status_code BIGINT,
        last_error       TEXT,
        created_at       BIGINT NOT NULL,
        delivered_at     BIGINT
    );
    CREATE INDEX notification_deliveries_due ON notification_deliveries (next_attempt_at)
        WHERE status = 'pending';
    CREATE INDEX notification_deliveries_of ON notification_deliveries (notification_id, id);
    ALTER TABLE session_queues ADD COLUMN notified BIGINT;
    UPDATE session_queues SET notified = 1 WHERE ended_at IS NOT NULL;
    CREATE INDEX session_queues_unnotified ON session_queues (ended_at) WHERE notified IS NULL;
    CREATE TABLE audit_log (
        id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at         BIGINT NOT NULL,
        actor      TEXT NOT NULL,
        action     TEXT NOT NULL,
        subject    TEXT NOT NULL,
        detail     TEXT NOT NULL
    );
    CREATE INDEX session_queues_schedule ON session_queues (schedule_id)
        WHERE schedule_id IS NOT NULL;
    -- /metrics reads the pickups of the last minutes.
    CREATE INDEX session_queues_started ON session_queues (started_at)
        WHERE started_at IS NOT NULL;
    "#,
    ),
    // 12: concurrency policies (db/concurrency.rs): at most
    // `concurrency_limit` sessions of a workflow run at once, per value of
    // its param `concurrency_key_param` when it has one, which each session
    // keeps as `concurrency_key` ('' without one).
    (
        12,
        r#"
    ALTER TABLE workflows ADD COLUMN concurrency_limit BIGINT;
    ALTER TABLE workflows ADD COLUMN concurrency_on_limit TEXT;
    ALTER TABLE workflows ADD COLUMN concurrency_key_param TEXT;
    ALTER TABLE session_queues ADD COLUMN concurrency_key TEXT NOT NULL DEFAULT '';
    CREATE INDEX session_queues_concurrency
        ON session_queues (workflow_id, concurrency_key, status)
        WHERE status IN ('queued', 'running');
    "#,
    ),
    (
        13,
        r#"
    ALTER TABLE workflows ADD COLUMN accept_undeclared_params BIGINT NOT NULL DEFAULT 0;
    "#,
    ),
    // 14: named credentials (see the SQLite list).
    (
        14,
        r#"
    CREATE TABLE credentials (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        kind          TEXT NOT NULL,
        field_names   TEXT NOT NULL,
        fields_sealed BYTEA NOT NULL,
        allow_robots  TEXT NOT NULL,
        allow_labels  TEXT NOT NULL,
        description   TEXT NOT NULL,
        version       BIGINT NOT NULL,
        created_at    BIGINT NOT NULL,
        created_by    TEXT NOT NULL,
        updated_at    BIGINT NOT NULL,
        updated_by    TEXT NOT NULL
    );
    ALTER TABLE workflows ADD COLUMN credentials TEXT NOT NULL DEFAULT '[]';
    "#,
    ),
    (
        15,
        r#"
    ALTER TABLE session_queues ADD COLUMN lease_poll_seq BIGINT;
    "#,
    ),
    (
        16,
        r#"
    ALTER TABLE workflows ADD COLUMN retry_on TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE session_queues ADD COLUMN attempt BIGINT NOT NULL DEFAULT 1;
    ALTER TABLE session_queues ADD COLUMN log_seq_base BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE session_queues ADD COLUMN log_cut_at BIGINT;
    ALTER TABLE workflows ADD COLUMN limit_log_bytes BIGINT;
    "#,
    ),
    (
        17,
        r#"
    ALTER TABLE session_queues DROP CONSTRAINT session_queues_status_check;
    ALTER TABLE session_queues ADD CONSTRAINT session_queues_status_check
        CHECK (status IN ('queued', 'running', 'waiting', 'success', 'error', 'cancelled'));
    CREATE TABLE session_waits (
        session_id BIGINT PRIMARY KEY REFERENCES session_queues(id),
        step_id    TEXT NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('approval', 'event')),
        message    TEXT,
        event      TEXT,
        since      BIGINT NOT NULL,
        deadline   BIGINT NOT NULL,
        on_timeout TEXT NOT NULL CHECK (on_timeout IN ('approve', 'reject')),
        checkpoint BYTEA,
        callback_secret BYTEA,
        outcome    TEXT,
        decided_by TEXT,
        decided_at BIGINT,
        comment    TEXT
    );
    CREATE INDEX session_waits_due ON session_waits (deadline) WHERE outcome IS NULL;
    CREATE FUNCTION session_waits_purge_checkpoint() RETURNS trigger AS $$
    BEGIN
        UPDATE session_waits SET checkpoint = NULL, callback_secret = NULL
        WHERE session_id = NEW.id AND checkpoint IS NOT NULL;
        RETURN NEW;
    END
    $$ LANGUAGE plpgsql;
    CREATE TRIGGER session_waits_purge_checkpoint
    AFTER UPDATE OF status ON session_queues
    FOR EACH ROW
    WHEN (NEW.status IN ('success', 'error', 'cancelled'))
    EXECUTE FUNCTION session_waits_purge_checkpoint();
    ALTER TABLE workflows ADD COLUMN limit_artifact_bytes BIGINT;
    ALTER TABLE workflows ADD COLUMN calls TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX workflows_by_name ON workflows (name, id);
    ALTER TABLE session_queues ADD COLUMN run_started_at BIGINT;
    ALTER TABLE session_queues ADD COLUMN cancel_reason TEXT;
    "#,
    ),
    (
        18,
        r#"
    ALTER TABLE workflows ADD COLUMN params_read BIGINT NOT NULL DEFAULT 0;
    "#,
    ),
    (
        19,
        r#"
    ALTER TABLE session_waits ADD COLUMN approvers TEXT NOT NULL DEFAULT '[]';
    "#,
    ),
    (
        20,
        r#"
    ALTER TABLE workflows ADD COLUMN registered_by TEXT;
    UPDATE workflows SET registered_by = created.actor
    FROM (SELECT subject, MIN(actor) AS actor FROM audit_log
          WHERE action = 'workflow.create' GROUP BY subject) AS created
    WHERE created.subject = 'workflow ' || workflows.id;
    CREATE TABLE workflow_names (
        name   TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        since  BIGINT NOT NULL
    );
    INSERT INTO workflow_names (name, key_id, since)
    SELECT w.name, w.registered_by, w.created_at FROM workflows w
    WHERE w.id = (SELECT MIN(o.id) FROM workflows o
                  WHERE o.name = w.name AND o.registered_by IS NOT NULL);
    "#,
    ),
    (
        21,
        r#"
    ALTER TABLE credentials ADD COLUMN allow_workflows TEXT;
    "#,
    ),
    (
        22,
        r#"
    ALTER TABLE access_keys ADD COLUMN robot_labels TEXT;
    "#,
    ),
];

/// The schema version this hub migrates to, the same on both engines.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The version a database's schema is at (0 before the first migration).
pub fn schema_version(conn: &mut Conn<'_>) -> Result<i64, DbError> {
    match conn.dialect() {
        Dialect::Sqlite => conn.row("PRAGMA user_version", params![], |r| r.get(0)),
        Dialect::Postgres => {
            let exists = conn.count(
                "SELECT COUNT(*) FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = 'tasuki_schema'",
                params![],
            )?;
            if exists == 0 {
                return Ok(0);
            }
            Ok(conn
                .opt_row("SELECT version FROM tasuki_schema", params![], |r| r.get(0))?
                .unwrap_or(0))
        }
    }
}

/// Any number from `pg_advisory_xact_lock`'s one space, the same in every
/// hub: "tasuki" in ASCII.
const MIGRATION_LOCK: i64 = 0x7461_7375_6b69;

pub fn migrate_postgres(conn: &mut Conn<'_>, shown: &str) -> Result<(), DbError> {
    let known = POSTGRES_MIGRATIONS.last().map_or(0, |(v, _)| *v);
    conn.transaction(|tx| {
        tx.execute("SELECT pg_advisory_xact_lock(?1)", params![MIGRATION_LOCK])?;
        tx.batch("CREATE TABLE IF NOT EXISTS tasuki_schema (version BIGINT NOT NULL)")?;
        let found: i64 = tx
            .opt_row("SELECT version FROM tasuki_schema", params![], |r| r.get(0))?
            .unwrap_or(0);
        if found > known {
            return Err(DbError::TooNew {
                path: shown.into(),
                found,
                known,
            });
        }
        for (version, sql) in POSTGRES_MIGRATIONS.iter().filter(|(v, _)| *v > found) {
            tx.batch(sql)?;
            tx.execute("DELETE FROM tasuki_schema", params![])?;
            tx.execute(
                "INSERT INTO tasuki_schema (version) VALUES (?1)",
                params![*version],
            )?;
            tracing::info!(version, "migrated the database schema");
        }
        Ok(())
    })
}

pub fn migrate(conn: &mut Connection, path: &str) -> Result<(), DbError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(DbError::TooNew {
            path: path.into(),
            found,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        // A new schema version makes every connection read the schema
        // again, this one too: a migration that edits the schema's text
        // (17) is not seen otherwise.
        let schema: i64 = tx.pragma_query_value(None, "schema_version", |r| r.get(0))?;
        tx.pragma_update(None, "schema_version", schema + 1)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "migrated the database schema");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_engines_reach_the_same_version() {
        assert_eq!(
            POSTGRES_MIGRATIONS.last().map(|(v, _)| *v),
            Some(MIGRATIONS.len() as i64),
            "a migration appended to one list is appended to the other"
        );
    }

    #[test]
    fn a_session_may_wait_after_version_17_on_this_and_every_new_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, "file").unwrap();
        // The rows below name no workflow.
        conn.pragma_update(None, "foreign_keys", false).unwrap();
        let insert =
            "INSERT INTO session_queues (workflow_id, status, params, secret_params, created_at)
                      VALUES (1, ?1, '{}', '[]', 0)";
        conn.execute(insert, ["waiting"]).unwrap();
        let other = Connection::open(&path).unwrap();
        other.pragma_update(None, "foreign_keys", false).unwrap();
        other.execute(insert, ["waiting"]).unwrap();
        // The CHECK still holds for anything else.
        let err = other.execute(insert, ["asleep"]).unwrap_err();
        assert!(err.to_string().contains("CHECK"), "{err}");
        let integrity: String = other
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
    }

    /// Names registered before they were owned are the first registrant's,
    /// as the audit log says; a name with no such entry is nobody's yet.
    #[test]
    fn version_20_gives_each_name_to_the_key_that_first_registered_it() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..19] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 19).unwrap();
        for (id, name, key) in [
            (1, "stamp", Some("TSKFIRST")),
            (2, "stamp", Some("TSKLATER")),
            (3, "label", Some("TSKLATER")),
            (4, "orphan", None),
            // Its first workflow is older than the audit log.
            (5, "old", None),
            (6, "old", Some("TSKOLD")),
        ] {
            conn.execute(
                "INSERT INTO workflows (id, name, description, single_process_mode, source_format,
                                        source, param_specs, workflow_robots, created_at)
                 VALUES (?1, ?2, '', 0, 'yaml', '', '[]', '[]', ?1)",
                rusqlite::params![id, name],
            )
            .unwrap();
            if let Some(key) = key {
                conn.execute(
                    "INSERT INTO audit_log (at, actor, action, subject, detail)
                     VALUES (?1, ?2, 'workflow.create', ?3, '{}')",
                    rusqlite::params![id, key, format!("workflow {id}")],
                )
                .unwrap();
            }
        }
        migrate(&mut conn, "mem").unwrap();
        let mut owners: Vec<(String, String)> = conn
            .prepare("SELECT name, key_id FROM workflow_names ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        owners.sort();
        assert_eq!(
            owners,
            [
                ("label".to_string(), "TSKLATER".to_string()),
                ("old".to_string(), "TSKOLD".to_string()),
                ("stamp".to_string(), "TSKFIRST".to_string()),
            ]
        );
        let registrants: Vec<Option<String>> = conn
            .prepare("SELECT registered_by FROM workflows ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            registrants,
            [
                Some("TSKFIRST"),
                Some("TSKLATER"),
                Some("TSKLATER"),
                None,
                None,
                Some("TSKOLD")
            ]
            .map(|k| k.map(String::from))
        );
    }

    #[test]
    fn migrates_once_and_refuses_newer() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, "mem").unwrap();
        migrate(&mut conn, "mem").unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        assert_eq!(
            schema_version(&mut Conn::sqlite(&mut conn)).unwrap(),
            SCHEMA_VERSION
        );
        conn.pragma_update(None, "user_version", v + 1).unwrap();
        let err = migrate(&mut conn, "mem").unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
