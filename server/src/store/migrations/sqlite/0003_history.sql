-- Sessions and sequence numbers of the delta protocol, and the history of processes and sockets.

ALTER TABLE hosts ADD COLUMN session INTEGER NOT NULL DEFAULT 0;

-- A process started (exec) or ended (exit). `at` is the start time for exec, when the agent saw
-- it go for exit.
CREATE TABLE process_events (
    id          INTEGER PRIMARY KEY,
    host_id     INTEGER NOT NULL REFERENCES hosts (id),
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('exec', 'exit')),
    pid         INTEGER NOT NULL,
    ppid        INTEGER,
    name        TEXT,
    exe         TEXT,
    cmdline     TEXT,
    user        TEXT,
    uid         INTEGER,
    start_time  TEXT NOT NULL
);
CREATE INDEX process_events_host_at ON process_events (host_id, at);

-- A listener or connection appeared (open) or went (close).
CREATE TABLE socket_events (
    id              INTEGER PRIMARY KEY,
    host_id         INTEGER NOT NULL REFERENCES hosts (id),
    at              TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('open', 'close')),
    socket          TEXT NOT NULL CHECK (socket IN ('listener', 'connection')),
    protocol        TEXT NOT NULL,
    local_address   TEXT NOT NULL,
    local_port      INTEGER NOT NULL,
    remote_address  TEXT,
    remote_port     INTEGER,
    direction       TEXT,
    pid             INTEGER,
    process         TEXT,
    exe             TEXT,
    netns           INTEGER
);
CREATE INDEX socket_events_host_at ON socket_events (host_id, at);
