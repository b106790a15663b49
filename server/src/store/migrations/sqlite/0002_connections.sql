-- Connections (established TCP, connected UDP) and network namespaces of sockets.

ALTER TABLE listeners ADD COLUMN netns INTEGER;

CREATE TABLE connections (
    id              INTEGER PRIMARY KEY,
    host_id         INTEGER NOT NULL REFERENCES hosts (id),
    protocol        TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    local_address   TEXT NOT NULL,
    local_port      INTEGER NOT NULL,
    remote_address  TEXT NOT NULL,
    remote_port     INTEGER NOT NULL,
    direction       TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    pid             INTEGER,
    process         TEXT,
    exe             TEXT,
    uid             INTEGER NOT NULL,
    netns           INTEGER
);
CREATE INDEX connections_host ON connections (host_id);
