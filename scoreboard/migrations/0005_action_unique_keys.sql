-- The catalogue's `unique` rules (docs/actions.md): a completed action whose type counts once
-- per user and key (a task id, a match and opponent, a UTC day) takes its key here, in the
-- transaction that stores it. The primary key makes a second use impossible, whichever worker
-- commits it and however often it is delivered. Actions stored before this migration took no
-- key: the rules count from here on.

CREATE TABLE action_unique_keys (
    user_id     bigint NOT NULL REFERENCES users (id),
    action_type text   NOT NULL,
    unique_key  text   NOT NULL,
    action_id   uuid   NOT NULL REFERENCES action_logs (action_id),
    PRIMARY KEY (user_id, action_type, unique_key)
);
