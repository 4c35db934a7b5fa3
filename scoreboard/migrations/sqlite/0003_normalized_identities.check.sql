-- Usernames and emails are now unique without regard to case: keep one account of each name
-- listed and give the others new usernames or emails (with the sqlite3 shell on the data
-- directory's scoreboard.sqlite3, say `UPDATE users SET username = 'alice_2' WHERE id = 7;`,
-- and tell their owners); a name outside ASCII (only ever stored by hand) needs an ASCII one.
-- Then run `scoreboard migrate` (or start the server) again. See docs/accounts.md.
SELECT problem FROM (
    SELECT 'username ' || lower(username) || ' is shared by: '
           || group_concat(username || ' (id ' || id || ')', ', ') AS problem
    FROM (SELECT * FROM users ORDER BY id) GROUP BY lower(username) HAVING count(*) > 1
    UNION ALL
    SELECT 'email ' || lower(email) || ' is shared by: '
           || group_concat(email || ' (id ' || id || ', ' || username || ')', ', ')
    FROM (SELECT * FROM users ORDER BY id) GROUP BY lower(email) HAVING count(*) > 1
    UNION ALL
    SELECT 'account id ' || id || ' (' || username || ', ' || email
           || ') has characters outside ASCII'
    FROM users WHERE username GLOB '*[^ -~]*' OR email GLOB '*[^ -~]*'
) ORDER BY problem;
