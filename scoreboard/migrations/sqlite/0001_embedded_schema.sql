-- Embedded mode: the PostgreSQL schema (../0001_users_actions_signing_keys.sql) in SQLite, plus
-- the in-process broker's durable queues. Times are epoch milliseconds; JSON is text.

CREATE TABLE users (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    username            TEXT    NOT NULL,
    email               TEXT    NOT NULL,
    password_hash       TEXT    NOT NULL,
    score               INTEGER NOT NULL DEFAULT 0 CHECK (score >= 0),
    -- When the current score was reached: equal scores rank by who got there first.
    score_reached_at_ms INTEGER NOT NULL,
    disabled            INTEGER NOT NULL DEFAULT 0,
    last_action_at_ms   INTEGER,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE INDEX users_rank_idx ON users (score DESC, score_reached_at_ms ASC);

-- Append-only, one row per settled action; the unique keys make a redelivery (same action_id)
-- and a replayed request (same user and nonce) land on the row that is already there.
CREATE TABLE action_logs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    action_id        TEXT    NOT NULL,
    user_id          INTEGER NOT NULL REFERENCES users (id),
    nonce            TEXT    NOT NULL,
    action_type      TEXT    NOT NULL,
    action_data      TEXT    NOT NULL DEFAULT '{}',
    status           TEXT    NOT NULL CHECK (status IN ('completed', 'rejected', 'failed')),
    score_delta      INTEGER NOT NULL CHECK (score_delta >= 0),
    new_score        INTEGER NOT NULL,
    error            TEXT,
    message          TEXT,
    retry_after_s    INTEGER,
    flags            TEXT    NOT NULL DEFAULT '[]',
    ip_address       TEXT,
    user_agent       TEXT,
    request_headers  TEXT    NOT NULL DEFAULT '{}',
    received_at_ms   INTEGER NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    processed_at_ms  INTEGER,
    CONSTRAINT action_logs_action_id_key UNIQUE (action_id),
    CONSTRAINT action_logs_user_nonce_key UNIQUE (user_id, nonce),
    CONSTRAINT action_logs_delta_only_when_completed CHECK (status = 'completed' OR score_delta = 0)
);

CREATE INDEX action_logs_user_received_idx ON action_logs (user_id, received_at_ms);

CREATE TABLE signing_keys (
    kid           TEXT    PRIMARY KEY,
    private_pem   TEXT    NOT NULL,
    public_jwk    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    retired_at_ms INTEGER
);

-- The in-process broker's actions queue (a transactional outbox): a row is an accepted action
-- until the scorer's settlement deletes it. `deliveries` counts hand-overs to a consumer, so a
-- row handed over before (and not settled) is delivered again flagged as redelivered.
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id      TEXT    NOT NULL,
    user_id         INTEGER,
    nonce           TEXT,
    body            BLOB    NOT NULL,
    published_at_ms INTEGER NOT NULL,
    deliveries      INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX outbox_user_nonce_idx ON outbox (user_id, nonce);
CREATE INDEX outbox_message_id_idx ON outbox (message_id);

-- Dead letters (RabbitMQ's `user-actions.failed`), with the reason.
CREATE TABLE failed_actions (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   TEXT    NOT NULL,
    user_id      INTEGER,
    nonce        TEXT,
    body         BLOB    NOT NULL,
    reason       TEXT    NOT NULL,
    failed_at_ms INTEGER NOT NULL
);

CREATE INDEX failed_actions_user_nonce_idx ON failed_actions (user_id, nonce);
