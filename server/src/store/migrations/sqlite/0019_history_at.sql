-- History by time alone: retention prunes the oldest events in bounded batches, and fleet-wide
-- history queries (`--since` without a host) read a window, without scanning every host's.
CREATE INDEX process_events_at ON process_events (at);
CREATE INDEX socket_events_at ON socket_events (at);
CREATE INDEX file_changes_at ON file_changes (at);
