-- The PostgreSQL store's schema (issue 17). Not released yet: this first migration is rewritten
-- in place until the PostgreSQL store ships; from then on, each change is a migration of its own.
--
-- Times are timestamptz, kept to the millisecond as the wire and the SQLite store keep them;
-- JSON is jsonb. Credentials are stored as SHA-256 hashes only, in tables no query role reads.

CREATE TABLE enroll_secrets (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    tags        JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL,
    created_by  TEXT NOT NULL,
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

CREATE TABLE hosts (
    id                   BIGSERIAL PRIMARY KEY,
    hostname             TEXT NOT NULL,
    machine_id           TEXT NOT NULL,
    os                   TEXT NOT NULL DEFAULT '',
    kernel               TEXT NOT NULL DEFAULT '',
    arch                 TEXT NOT NULL DEFAULT '',
    boot_time            TIMESTAMPTZ,
    tags                 JSONB NOT NULL DEFAULT '{}',
    reported_tags        JSONB NOT NULL DEFAULT '{}',
    cloud                JSONB,
    instance_id          TEXT,
    verified_instance_id TEXT,
    enroll_secret_id     BIGINT REFERENCES enroll_secrets (id),
    agent_version        TEXT NOT NULL DEFAULT '',
    interval_secs        INTEGER NOT NULL DEFAULT 10,
    coverage_degraded    BOOLEAN NOT NULL DEFAULT FALSE,
    coverage_why         JSONB NOT NULL DEFAULT '[]',
    agent_stats          JSONB,
    workload             TEXT,
    enrolled_at          TIMESTAMPTZ NOT NULL,
    last_seen            TIMESTAMPTZ,
    last_seq             BIGINT NOT NULL DEFAULT 0,
    session              BIGINT NOT NULL DEFAULT 0,
    prior_session        BIGINT,
    goodbye              TEXT,
    retired_at           TIMESTAMPTZ
);
CREATE INDEX hosts_machine_id ON hosts (machine_id);
CREATE INDEX hosts_hostname ON hosts (hostname);
CREATE INDEX hosts_instance_id ON hosts (instance_id);
CREATE INDEX hosts_enroll_secret ON hosts (enroll_secret_id);

CREATE TABLE node_keys (
    key_hash    TEXT PRIMARY KEY,
    host_id     BIGINT NOT NULL REFERENCES hosts (id),
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX node_keys_host ON node_keys (host_id);

-- One row per (host, kind, rule, subject); rule is '' for kinds no built-in rule files.
CREATE TABLE findings (
    id           BIGSERIAL PRIMARY KEY,
    host_id      BIGINT NOT NULL REFERENCES hosts (id),
    kind         TEXT NOT NULL,
    rule         TEXT NOT NULL DEFAULT '',
    severity     TEXT NOT NULL,
    subject      TEXT NOT NULL,
    detail       JSONB NOT NULL DEFAULT '{}',
    status       TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    first_seen   TIMESTAMPTZ NOT NULL,
    last_seen    TIMESTAMPTZ NOT NULL,
    opened_at    TIMESTAMPTZ NOT NULL,
    resolved_at  TIMESTAMPTZ,
    times_opened INTEGER NOT NULL DEFAULT 1,
    occurrences  BIGINT NOT NULL DEFAULT 1,
    transient    BOOLEAN NOT NULL DEFAULT FALSE,
    silenced_by  BIGINT,
    acked_by     TEXT,
    acked_at     TIMESTAMPTZ,
    ack_note     TEXT,
    UNIQUE (host_id, kind, rule, subject)
);
CREATE INDEX findings_status ON findings (status, host_id);
CREATE INDEX findings_opened ON findings (host_id, opened_at);

CREATE TABLE api_tokens (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('reader', 'analyst', 'admin')),
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL,
    created_by  TEXT NOT NULL,
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);

CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);

CREATE TABLE baselines (
    name        TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL,
    applied_by  TEXT NOT NULL
);

-- Bumped by every change to baselines, so that every collector on the store knows when to reload.
CREATE TABLE store_meta (
    key     TEXT PRIMARY KEY,
    value   BIGINT NOT NULL
);
INSERT INTO store_meta (key, value) VALUES ('baselines_revision', 0);

-- Maintenance windows: one host, or every host whose tags hold the selector.
CREATE TABLE silences (
    id         BIGSERIAL PRIMARY KEY,
    host_id    BIGINT REFERENCES hosts (id),
    selector   JSONB,
    starts_at  TIMESTAMPTZ NOT NULL,
    ends_at    TIMESTAMPTZ NOT NULL,
    reason     TEXT NOT NULL,
    created_by TEXT NOT NULL,
    CHECK ((host_id IS NULL) <> (selector IS NULL))
);
CREATE INDEX silences_ends ON silences (ends_at);

-- The alert outbox: every opening, reopening, escalation and resolution, written in the
-- transaction that made it, read by each sink from its cursor. A sequence never reuses an id, so
-- a cursor never skips one.
CREATE TABLE alert_events (
    id         BIGSERIAL PRIMARY KEY,
    finding_id BIGINT NOT NULL REFERENCES findings (id),
    event      TEXT NOT NULL CHECK (event IN ('opened', 'reopened', 'escalated', 'resolved')),
    silenced   BOOLEAN NOT NULL DEFAULT FALSE,
    at         TIMESTAMPTZ NOT NULL
);
-- Each sink's place in the outbox, and which collector holds it: a lease, so that several
-- collectors on one database deliver each event once.
CREATE TABLE alert_cursors (
    sink        TEXT PRIMARY KEY,
    last_id     BIGINT NOT NULL,
    leased_by   TEXT,
    lease_until TIMESTAMPTZ
);
