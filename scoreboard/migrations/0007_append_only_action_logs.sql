-- `action_logs` becomes append-only: a row is written once, when its action is settled, and
-- never changed or removed. A failure the database refused is no longer a row of `action_logs`
-- that a later replay overwrites: it goes to `action_failures`, append-only too, and the replay
-- that settles the action adds its own row to `action_logs`. Both stay, so the history shows
-- the failure and what came of it.
--
-- The application's role gets SELECT and INSERT on these tables only (and on the other logs:
-- the unique keys actions took, the suspensions, the refusals at the edge): `scoreboard migrate`,
-- run as the role that owns the schema, calls `scoreboard_grant_application_role` below for the
-- role of `database.url` whenever the two differ (docs/database.md).

CREATE TABLE action_failures (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action_id       uuid        NOT NULL,
    user_id         bigint      NOT NULL REFERENCES users (id),
    nonce           text        NOT NULL,
    action_type     varchar(50) NOT NULL,
    action_data     jsonb       NOT NULL DEFAULT '{}',
    -- The user's score when the action failed.
    score           bigint      NOT NULL,
    reason          text        NOT NULL,
    ip_address      text,
    user_agent      text,
    request_headers jsonb       NOT NULL DEFAULT '{}',
    received_at     timestamptz NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    -- One failure per action: a redelivered failure is not recorded twice.
    CONSTRAINT action_failures_action_id_key UNIQUE (action_id)
);

CREATE INDEX action_failures_user_nonce_idx ON action_failures (user_id, nonce);
CREATE INDEX action_failures_user_received_idx ON action_failures (user_id, received_at);

INSERT INTO action_failures (
    action_id, user_id, nonce, action_type, action_data, score, reason, ip_address, user_agent,
    request_headers, received_at, failed_at
)
SELECT action_id, user_id, nonce, action_type, action_data, new_score, COALESCE(message, ''),
       ip_address, user_agent, request_headers, received_at, COALESCE(processed_at, created_at)
FROM action_logs
WHERE status = 'failed'
ORDER BY id;

DELETE FROM action_logs WHERE status = 'failed';

ALTER TABLE action_logs
    DROP CONSTRAINT action_logs_status_check,
    ADD CONSTRAINT action_logs_settled_status CHECK (status IN ('completed', 'rejected'));

-- The audit trail's third part: the actions the API refused before queueing them (a 4xx on
-- `POST /api/v1/actions/perform`, a refused `action` frame on the WebSocket), written in batches
-- by the API's auditor. `user_id` is NULL when the caller was not authenticated.
CREATE TABLE edge_refusals (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         bigint      REFERENCES users (id),
    action_type     text,
    nonce           text,
    channel         text        NOT NULL CHECK (channel IN ('http', 'websocket')),
    status_code     smallint    NOT NULL,
    error           text        NOT NULL,
    message         text        NOT NULL,
    ip_address      text,
    user_agent      text,
    request_headers jsonb       NOT NULL DEFAULT '{}',
    refused_at      timestamptz NOT NULL
);

CREATE INDEX edge_refusals_user_refused_idx ON edge_refusals (user_id, refused_at);
CREATE INDEX edge_refusals_refused_idx ON edge_refusals (refused_at);

REVOKE UPDATE, DELETE, TRUNCATE
    ON action_logs, action_failures, action_unique_keys, user_suspensions, edge_refusals
    FROM PUBLIC;

-- The application's privileges, granted to `app_role` by the schema's owner: everything it needs
-- on every table, less UPDATE, DELETE and TRUNCATE on the append-only tables, and read-only
-- `schema_migrations`. Idempotent; run again after each migration (`scoreboard migrate` does).
CREATE FUNCTION scoreboard_grant_application_role(app_role name) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    append_only CONSTANT text[] :=
        ARRAY['action_logs', 'action_failures', 'action_unique_keys', 'user_suspensions',
              'edge_refusals'];
    owner name := (SELECT tableowner FROM pg_tables
                   WHERE schemaname = current_schema() AND tablename = 'action_logs');
BEGIN
    IF app_role = owner THEN
        RAISE EXCEPTION 'the application role % owns the schema: it could change action_logs; '
                        'connect the application as a role of its own', app_role;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), app_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I',
                   current_schema(), app_role);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I',
                   current_schema(), app_role);
    EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM %I',
                   (SELECT string_agg(format('%I', t), ', ') FROM unnest(append_only) AS t),
                   app_role);
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM %I',
                   app_role);
END
$$;
