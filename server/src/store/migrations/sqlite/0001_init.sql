-- hostwatch schema v1 (SQLite). Times are RFC 3339 UTC text of fixed width, so they sort as
-- instants; JSON columns hold objects or arrays as text.

CREATE TABLE hosts (
    id              INTEGER PRIMARY KEY,
    hostname        TEXT NOT NULL,
    machine_id      TEXT NOT NULL,
    os              TEXT NOT NULL DEFAULT '',
    kernel          TEXT NOT NULL DEFAULT '',
    arch            TEXT NOT NULL DEFAULT '',
    boot_time       TEXT,
    tags            TEXT NOT NULL DEFAULT '{}',
    agent_version   TEXT NOT NULL DEFAULT '',
    interval_secs   INTEGER NOT NULL DEFAULT 10,
    coverage_degraded INTEGER NOT NULL DEFAULT 0,
    coverage_why    TEXT NOT NULL DEFAULT '[]',
    workload        TEXT,
    enrolled_at     TEXT NOT NULL,
    last_seen       TEXT,
    last_seq        INTEGER NOT NULL DEFAULT 0,
    goodbye         TEXT,
    retired_at      TEXT
);
CREATE INDEX hosts_machine_id ON hosts (machine_id);
CREATE INDEX hosts_hostname ON hosts (hostname);

-- Secrets: only SHA-256 hashes, never the secrets. These tables are never exposed to SQL queries.
CREATE TABLE node_keys (
    key_hash    TEXT PRIMARY KEY,
    host_id     INTEGER NOT NULL REFERENCES hosts (id),
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX node_keys_host ON node_keys (host_id);

CREATE TABLE enroll_secrets (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('reader', 'analyst', 'admin')),
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  TEXT
);

-- Current state, replaced whole by each full snapshot.
CREATE TABLE processes (
    host_id     INTEGER NOT NULL REFERENCES hosts (id),
    pid         INTEGER NOT NULL,
    ppid        INTEGER NOT NULL,
    name        TEXT NOT NULL,
    exe         TEXT,
    exe_deleted INTEGER NOT NULL DEFAULT 0,
    cmdline     TEXT NOT NULL DEFAULT '[]',
    uid         INTEGER NOT NULL,
    user        TEXT,
    start_time  TEXT NOT NULL,
    PRIMARY KEY (host_id, pid)
);

CREATE TABLE listeners (
    id          INTEGER PRIMARY KEY,
    host_id     INTEGER NOT NULL REFERENCES hosts (id),
    protocol    TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    address     TEXT NOT NULL,
    port        INTEGER NOT NULL,
    pid         INTEGER,
    process     TEXT,
    exe         TEXT,
    uid         INTEGER NOT NULL
);
CREATE INDEX listeners_host ON listeners (host_id);

CREATE TABLE baselines (
    name        TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    applied_at  TEXT NOT NULL,
    applied_by  TEXT NOT NULL
);

-- One row per (host, kind, rule, subject); rule is '' for kinds no built-in rule files.
CREATE TABLE findings (
    id          INTEGER PRIMARY KEY,
    host_id     INTEGER NOT NULL REFERENCES hosts (id),
    kind        TEXT NOT NULL,
    rule        TEXT NOT NULL DEFAULT '',
    severity    TEXT NOT NULL,
    subject     TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    opened_at   TEXT NOT NULL,
    resolved_at TEXT,
    times_opened INTEGER NOT NULL DEFAULT 1,
    UNIQUE (host_id, kind, rule, subject)
);
CREATE INDEX findings_status ON findings (status, host_id);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT '{}'
);

-- Bumped by every change to baselines, so that every collector on the store knows when to reload.
CREATE TABLE store_meta (
    key     TEXT PRIMARY KEY,
    value   INTEGER NOT NULL
);
INSERT INTO store_meta (key, value) VALUES ('baselines_revision', 0);
