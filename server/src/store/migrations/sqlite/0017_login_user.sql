-- The name of a process's login uid (who logged in), as the host's user database names it:
-- what a baseline's [[session]] rules name.
ALTER TABLE processes ADD COLUMN login_user TEXT;
