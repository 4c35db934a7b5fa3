-- Embedded mode: the table of ../0005_action_unique_keys.sql.

CREATE TABLE action_unique_keys (
    user_id     INTEGER NOT NULL REFERENCES users (id),
    action_type TEXT    NOT NULL,
    unique_key  TEXT    NOT NULL,
    action_id   TEXT    NOT NULL REFERENCES action_logs (action_id),
    PRIMARY KEY (user_id, action_type, unique_key)
) WITHOUT ROWID;
