-- Embedded mode: ../0003_normalized_identities.sql in SQLite. Usernames and emails are unique on
-- their normalized form (NFKC, then case-folded), which the application computes; for the
-- existing rows, all ASCII (0003_normalized_identities.check.sql stops on any other), it is what
-- SQLite's lower() gives. SQLite cannot drop the case-sensitive constraints without rebuilding
-- the table: they stay, implied by the new ones. The columns' empty default is only there
-- because SQLite adds a NOT NULL column with one; the store always sets them.

ALTER TABLE users ADD COLUMN username_normalized TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN email_normalized TEXT NOT NULL DEFAULT '';

UPDATE users SET username_normalized = lower(username), email_normalized = lower(email);

CREATE UNIQUE INDEX users_username_normalized_key ON users (username_normalized);
CREATE UNIQUE INDEX users_email_normalized_key ON users (email_normalized);
