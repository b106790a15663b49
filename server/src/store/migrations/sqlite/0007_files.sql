-- Watched files: every change an agent reported, and the latest known state of each path that
-- changed (the agents keep the manifest of every watched file; the collector hears of changes).

CREATE TABLE file_changes (
    id              INTEGER PRIMARY KEY,
    host_id         INTEGER NOT NULL REFERENCES hosts (id),
    at              TEXT NOT NULL,
    path            TEXT NOT NULL,
    change          TEXT NOT NULL CHECK (change IN ('created', 'modified', 'deleted', 'metadata', 'renamed')),
    origin          TEXT NOT NULL CHECK (origin IN ('live', 'downtime', 'rescan', 'bake')),
    from_path       TEXT,
    old_sha256      TEXT,
    new_sha256      TEXT,
    package         TEXT,
    package_version TEXT,
    package_matches INTEGER,
    -- The change as the agent sent it (JSON): old and new state, whole.
    detail          TEXT NOT NULL
);
CREATE INDEX file_changes_host_at ON file_changes (host_id, at);
CREATE INDEX file_changes_path ON file_changes (path);

CREATE TABLE files (
    host_id     INTEGER NOT NULL REFERENCES hosts (id),
    path        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    mode        INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    gid         INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    mtime       TEXT NOT NULL,
    sha256      TEXT,
    target      TEXT,
    changed_at  TEXT NOT NULL,
    PRIMARY KEY (host_id, path)
);
