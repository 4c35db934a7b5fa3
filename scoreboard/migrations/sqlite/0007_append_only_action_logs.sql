-- `action_logs` becomes append-only, as in PostgreSQL: a failure goes to `action_failures`
-- (append-only too) instead of a row that a later replay overwrote, and triggers refuse any
-- UPDATE or DELETE of either table, or of `edge_refusals`, the actions the API refused before
-- queueing them (the audit trail's third part).

CREATE TABLE action_failures (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    action_id        TEXT    NOT NULL,
    user_id          INTEGER NOT NULL REFERENCES users (id),
    nonce            TEXT    NOT NULL,
    action_type      TEXT    NOT NULL,
    action_data      TEXT    NOT NULL DEFAULT '{}',
    score            INTEGER NOT NULL,
    reason           TEXT    NOT NULL,
    ip_address       TEXT,
    user_agent       TEXT,
    request_headers  TEXT    NOT NULL DEFAULT '{}',
    received_at_ms   INTEGER NOT NULL,
    failed_at_ms     INTEGER NOT NULL,
    CONSTRAINT action_failures_action_id_key UNIQUE (action_id)
);

CREATE INDEX action_failures_user_nonce_idx ON action_failures (user_id, nonce);
CREATE INDEX action_failures_user_received_idx ON action_failures (user_id, received_at_ms);

INSERT INTO action_failures (
    action_id, user_id, nonce, action_type, action_data, score, reason, ip_address, user_agent,
    request_headers, received_at_ms, failed_at_ms
)
SELECT action_id, user_id, nonce, action_type, action_data, new_score, COALESCE(message, ''),
       ip_address, user_agent, request_headers, received_at_ms,
       COALESCE(processed_at_ms, created_at_ms)
FROM action_logs
WHERE status = 'failed'
ORDER BY id;

DELETE FROM action_logs WHERE status = 'failed';

CREATE TRIGGER action_logs_no_update BEFORE UPDATE ON action_logs
BEGIN SELECT RAISE(ABORT, 'action_logs is append-only'); END;
CREATE TRIGGER action_logs_no_delete BEFORE DELETE ON action_logs
BEGIN SELECT RAISE(ABORT, 'action_logs is append-only'); END;
CREATE TRIGGER action_failures_no_update BEFORE UPDATE ON action_failures
BEGIN SELECT RAISE(ABORT, 'action_failures is append-only'); END;
CREATE TRIGGER action_failures_no_delete BEFORE DELETE ON action_failures
BEGIN SELECT RAISE(ABORT, 'action_failures is append-only'); END;

CREATE TABLE edge_refusals (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id          INTEGER REFERENCES users (id),
    action_type      TEXT,
    nonce            TEXT,
    channel          TEXT    NOT NULL CHECK (channel IN ('http', 'websocket')),
    status_code      INTEGER NOT NULL,
    error            TEXT    NOT NULL,
    message          TEXT    NOT NULL,
    ip_address       TEXT,
    user_agent       TEXT,
    request_headers  TEXT    NOT NULL DEFAULT '{}',
    refused_at_ms    INTEGER NOT NULL
);

CREATE INDEX edge_refusals_user_refused_idx ON edge_refusals (user_id, refused_at_ms);
CREATE INDEX edge_refusals_refused_idx ON edge_refusals (refused_at_ms);

CREATE TRIGGER edge_refusals_no_update BEFORE UPDATE ON edge_refusals
BEGIN SELECT RAISE(ABORT, 'edge_refusals is append-only'); END;
CREATE TRIGGER edge_refusals_no_delete BEFORE DELETE ON edge_refusals
BEGIN SELECT RAISE(ABORT, 'edge_refusals is append-only'); END;
