-- Who started a process: its audit login uid and session id (absent for what no login started),
-- and its ancestors as the agent saw them at its start (JSON: [{"pid", "name", "exe"}], parent
-- first), so that a chain survives a parent that has exited since.
ALTER TABLE processes ADD COLUMN login_uid INTEGER;
ALTER TABLE processes ADD COLUMN session_id INTEGER;
ALTER TABLE processes ADD COLUMN ancestry TEXT;
ALTER TABLE process_events ADD COLUMN login_uid INTEGER;
ALTER TABLE process_events ADD COLUMN session_id INTEGER;
ALTER TABLE process_events ADD COLUMN ancestry TEXT;
