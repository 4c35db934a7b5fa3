-- Usernames and emails are unique on their normalized form (NFKC, then case-folded), so `Alice`,
-- `ALICE` and `alice` are one name. The application computes that form for every new account
-- and every look-up; for the existing rows, all ASCII (0003_normalized_identities.check.sql
-- stops on any other), it is the ASCII lower case, which the C collation computes the same way
-- whatever the database's locale. The case-sensitive constraints are implied, and go.

ALTER TABLE users
    ADD COLUMN username_normalized text,
    ADD COLUMN email_normalized    text;

UPDATE users
SET username_normalized = lower(username COLLATE "C"),
    email_normalized    = lower(email COLLATE "C");

ALTER TABLE users
    ALTER COLUMN username_normalized SET NOT NULL,
    ALTER COLUMN email_normalized SET NOT NULL,
    ADD CONSTRAINT users_username_normalized_key UNIQUE (username_normalized),
    ADD CONSTRAINT users_email_normalized_key UNIQUE (email_normalized),
    DROP CONSTRAINT users_username_key,
    DROP CONSTRAINT users_email_key;
