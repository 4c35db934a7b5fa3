-- Embedded mode: ../0006_admin_suspension_flags.sql (admins, suspension, behavioural flags).

ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN suspended_at_ms INTEGER;

CREATE INDEX users_suspended_idx ON users (id) WHERE suspended_at_ms IS NOT NULL;

CREATE TABLE user_suspensions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL REFERENCES users (id),
    suspended     INTEGER NOT NULL,
    changed_by    TEXT    NOT NULL,
    changed_at_ms INTEGER NOT NULL
);

CREATE TABLE behaviour_flags (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT    NOT NULL
        CHECK (kind IN ('burst', 'regular_intervals', 'score_growth', 'shared_address')),
    subject          TEXT    NOT NULL,
    user_id          INTEGER REFERENCES users (id),
    address          TEXT    NOT NULL,
    window_start_ms  INTEGER NOT NULL,
    window_end_ms    INTEGER NOT NULL,
    raised_at_ms     INTEGER NOT NULL,
    evidence         TEXT    NOT NULL,
    cleared_at_ms    INTEGER,
    cleared_by       TEXT
);

CREATE INDEX behaviour_flags_raised_idx ON behaviour_flags (raised_at_ms, id);
CREATE INDEX behaviour_flags_user_raised_idx ON behaviour_flags (user_id, raised_at_ms, id);
CREATE INDEX behaviour_flags_standing_idx ON behaviour_flags (raised_at_ms) WHERE cleared_at_ms IS NULL;
CREATE INDEX behaviour_flags_cleared_idx ON behaviour_flags (cleared_at_ms) WHERE cleared_at_ms IS NOT NULL;
