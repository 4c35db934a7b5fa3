-- Operators and what they look at: the `admin` scope is granted only to users marked admin
-- (`scoreboard users grant-admin`); a suspended user's actions are refused and the user is off
-- the board until unsuspended; the behavioural flags the flags actor raises, with their evidence.

ALTER TABLE users
    ADD COLUMN admin        boolean NOT NULL DEFAULT false,
    ADD COLUMN suspended_at timestamptz;

CREATE INDEX users_suspended_idx ON users (id) WHERE suspended_at IS NOT NULL;

-- Every suspension and unsuspension, in order: the keeper follows it to take users off the board
-- and put them back, and operators read who did what when.
CREATE TABLE user_suspensions (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id),
    suspended  boolean     NOT NULL,
    changed_by text        NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- One row per flag raised. A flag never changes a score; an operator clears it (`cleared_at`,
-- `cleared_by`). `subject` is `user:<id>` or `address:<key>`: the detector's cool-off key.
CREATE TABLE behaviour_flags (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text        NOT NULL
        CHECK (kind IN ('burst', 'regular_intervals', 'score_growth', 'shared_address')),
    subject         text        NOT NULL,
    user_id         bigint      REFERENCES users (id),
    address         text        NOT NULL,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    raised_at       timestamptz NOT NULL,
    evidence        jsonb       NOT NULL,
    cleared_at      timestamptz,
    cleared_by      text
);

CREATE INDEX behaviour_flags_raised_idx ON behaviour_flags (raised_at, id);
CREATE INDEX behaviour_flags_user_raised_idx ON behaviour_flags (user_id, raised_at, id);
CREATE INDEX behaviour_flags_standing_idx ON behaviour_flags (raised_at) WHERE cleared_at IS NULL;
CREATE INDEX behaviour_flags_cleared_idx ON behaviour_flags (cleared_at) WHERE cleared_at IS NOT NULL;
