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

-- A host's current state, replaced and changed by its reports. Unsigned numbers of the wire
-- (pids, uids, namespaces, sizes) are stored as BIGINT; a u64 beyond i64 keeps its bits.
CREATE TABLE processes (
    host_id          BIGINT NOT NULL REFERENCES hosts (id),
    pid              BIGINT NOT NULL,
    ppid             BIGINT NOT NULL,
    name             TEXT NOT NULL,
    exe              TEXT,
    exe_deleted      BOOLEAN NOT NULL DEFAULT FALSE,
    cmdline          TEXT NOT NULL DEFAULT '[]',
    uid              BIGINT NOT NULL,
    "user"           TEXT,
    start_time       TIMESTAMPTZ NOT NULL,
    sha256           TEXT,
    exe_memfd        BOOLEAN NOT NULL DEFAULT FALSE,
    exe_writable_dir BOOLEAN NOT NULL DEFAULT FALSE,
    cgroup           TEXT,
    container_id     TEXT,
    unit             TEXT,
    cpu_percent      REAL,
    rss_bytes        BIGINT,
    exe_replaced     BOOLEAN NOT NULL DEFAULT FALSE,
    stdio_socket     TEXT,
    cpu_high_since   TIMESTAMPTZ,
    judged_through   BIGINT NOT NULL DEFAULT 0,
    exe_replacement  TEXT,
    login_uid        BIGINT,
    session_id       BIGINT,
    ancestry         TEXT,
    login_user       TEXT,
    PRIMARY KEY (host_id, pid)
);
CREATE INDEX processes_hot ON processes (cpu_high_since) WHERE cpu_high_since IS NOT NULL;
CREATE INDEX processes_sha256 ON processes (sha256) WHERE sha256 IS NOT NULL;
CREATE INDEX processes_exe ON processes (exe);

CREATE TABLE listeners (
    id             BIGSERIAL PRIMARY KEY,
    host_id        BIGINT NOT NULL REFERENCES hosts (id),
    protocol       TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    address        INET NOT NULL,
    port           INTEGER NOT NULL,
    pid            BIGINT,
    process        TEXT,
    exe            TEXT,
    uid            BIGINT NOT NULL,
    netns          BIGINT,
    judged_through BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX listeners_port ON listeners (port, address);
CREATE INDEX listeners_key ON listeners (host_id, port, id);

CREATE TABLE connections (
    id             BIGSERIAL PRIMARY KEY,
    host_id        BIGINT NOT NULL REFERENCES hosts (id),
    protocol       TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    local_address  INET NOT NULL,
    local_port     INTEGER NOT NULL,
    remote_address INET NOT NULL,
    remote_port    INTEGER NOT NULL,
    direction      TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    pid            BIGINT,
    process        TEXT,
    exe            TEXT,
    uid            BIGINT NOT NULL,
    netns          BIGINT,
    judged_through BIGINT NOT NULL DEFAULT 0
);
-- Addresses are INET: a CIDR block is a range of this index (<<=).
CREATE INDEX connections_remote ON connections (remote_address);
CREATE INDEX connections_key ON connections (host_id, local_port, remote_port, id);

-- History, partitioned by day on `at`: retention drops whole partitions. Rows whose day has no
-- partition (an agent's clock far off) go to the default partition, which pruning trims row by
-- row; a day's partition is made ahead of time, and takes its rows out of the default if some
-- arrived first.
CREATE TABLE process_events (
    id          BIGSERIAL NOT NULL,
    host_id     BIGINT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('exec', 'exit')),
    pid         BIGINT NOT NULL,
    ppid        BIGINT,
    name        TEXT,
    exe         TEXT,
    cmdline     TEXT,
    "user"      TEXT,
    uid         BIGINT,
    start_time  TIMESTAMPTZ NOT NULL,
    sha256      TEXT,
    login_uid   BIGINT,
    session_id  BIGINT,
    ancestry    TEXT,
    explained   TEXT
) PARTITION BY RANGE (at);
CREATE TABLE process_events_default PARTITION OF process_events DEFAULT;
CREATE INDEX process_events_host_at ON process_events (host_id, at);
CREATE INDEX process_events_at ON process_events (at, id);
CREATE INDEX process_events_sha256 ON process_events (sha256, at) WHERE sha256 IS NOT NULL AND kind = 'exec';

CREATE TABLE socket_events (
    id              BIGSERIAL NOT NULL,
    host_id         BIGINT NOT NULL,
    at              TIMESTAMPTZ NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('open', 'close')),
    socket          TEXT NOT NULL CHECK (socket IN ('listener', 'connection')),
    protocol        TEXT NOT NULL,
    local_address   INET NOT NULL,
    local_port      INTEGER NOT NULL,
    remote_address  INET,
    remote_port     INTEGER,
    direction       TEXT,
    pid             BIGINT,
    process         TEXT,
    exe             TEXT,
    netns           BIGINT
) PARTITION BY RANGE (at);
CREATE TABLE socket_events_default PARTITION OF socket_events DEFAULT;
CREATE INDEX socket_events_host_at ON socket_events (host_id, at);
CREATE INDEX socket_events_at ON socket_events (at, id);
CREATE INDEX socket_events_remote ON socket_events (remote_address, at) WHERE remote_address IS NOT NULL AND kind = 'open';

CREATE TABLE file_changes (
    id              BIGSERIAL NOT NULL,
    host_id         BIGINT NOT NULL,
    at              TIMESTAMPTZ NOT NULL,
    path            TEXT NOT NULL,
    change          TEXT NOT NULL CHECK (change IN ('created', 'modified', 'deleted', 'metadata', 'renamed')),
    origin          TEXT NOT NULL CHECK (origin IN ('live', 'downtime', 'rescan', 'bake')),
    from_path       TEXT,
    old_sha256      TEXT,
    new_sha256      TEXT,
    package         TEXT,
    package_version TEXT,
    package_matches BOOLEAN,
    -- The change as the agent sent it (JSON): old and new state, whole.
    detail          TEXT NOT NULL
) PARTITION BY RANGE (at);
CREATE TABLE file_changes_default PARTITION OF file_changes DEFAULT;
CREATE INDEX file_changes_host_at ON file_changes (host_id, at);
CREATE INDEX file_changes_path ON file_changes (path);
CREATE INDEX file_changes_at ON file_changes (at, id);

-- The latest state of each watched path that changed.
CREATE TABLE files (
    id            BIGSERIAL NOT NULL UNIQUE,
    host_id       BIGINT NOT NULL REFERENCES hosts (id),
    path          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    mode          BIGINT NOT NULL,
    uid           BIGINT NOT NULL,
    gid           BIGINT NOT NULL,
    size          BIGINT NOT NULL,
    mtime         TIMESTAMPTZ NOT NULL,
    sha256        TEXT,
    target        TEXT,
    changed_at    TIMESTAMPTZ NOT NULL,
    metadata_only BOOLEAN NOT NULL DEFAULT FALSE,
    inode         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (host_id, path)
);

-- The views `hostwatch query` reads, in a schema of their own: the stable names and columns
-- analysts query by. Analysts' SQL runs on connections of a role of its own that may read only
-- this schema (docs/scaling.md: the database administrator creates it and grants it
-- hostwatch_views); the views read the tables with their owner's rights. None of them reads a
-- table of credentials (node_keys, api_tokens, enroll_secrets) or the audit log. The hosts view's
-- status is decided by the collector's rule (`model::online_since`), which the collector sets
-- for the transaction as `hostwatch.online_since`: each reporting interval of the fleet with the
-- earliest last report of an online host.
CREATE SCHEMA hostwatch_views;

CREATE VIEW hostwatch_views.hosts AS
SELECT h.id, h.hostname, h.machine_id, h.instance_id, h.os, h.kernel, h.arch, h.workload,
       h.tags, h.reported_tags, h.agent_version, h.interval_secs,
       CASE WHEN h.retired_at IS NOT NULL THEN 'retired'
            WHEN h.goodbye IS NOT NULL THEN 'stopped'
            WHEN h.last_seen IS NOT NULL
                 AND h.last_seen >= (NULLIF(current_setting('hostwatch.online_since', true), '')::jsonb
                                     ->> h.interval_secs::text)::timestamptz
                 THEN 'online'
            ELSE 'offline' END AS status,
       CASE WHEN h.coverage_degraded THEN 'degraded' ELSE 'full' END AS coverage,
       h.coverage_why, h.cloud, h.enrolled_at, h.last_seen, h.retired_at,
       (SELECT count(*) FROM public.findings f
         WHERE f.status IN ('open', 'acknowledged') AND f.host_id = h.id) AS open_findings
FROM public.hosts h;

CREATE VIEW hostwatch_views.processes AS
SELECT p.host_id, h.hostname, p.pid, p.ppid, p.name, p.exe, p.exe_deleted, p.sha256, p.cmdline,
       p.uid, p."user", p.login_uid, p.login_user, p.session_id, p.start_time, p.cgroup,
       p.container_id, p.unit, p.cpu_percent, p.rss_bytes, p.exe_memfd, p.exe_writable_dir,
       p.ancestry
FROM public.processes p JOIN public.hosts h ON h.id = p.host_id;

CREATE VIEW hostwatch_views.listeners AS
SELECT l.host_id, h.hostname, l.protocol, l.address, l.port, l.pid, l.process, l.exe, l.uid,
       l.netns
FROM public.listeners l JOIN public.hosts h ON h.id = l.host_id;

CREATE VIEW hostwatch_views.connections AS
SELECT c.host_id, h.hostname, c.protocol, c.local_address, c.local_port, c.remote_address,
       c.remote_port, c.direction, c.pid, c.process, c.exe, c.uid, c.netns
FROM public.connections c JOIN public.hosts h ON h.id = c.host_id;

CREATE VIEW hostwatch_views.files AS
SELECT f.host_id, h.hostname, f.path, f.kind, f.mode, f.uid, f.gid, f.size, f.mtime, f.sha256,
       f.target, f.metadata_only, f.changed_at
FROM public.files f JOIN public.hosts h ON h.id = f.host_id;

CREATE VIEW hostwatch_views.file_changes AS
SELECT c.id, c.host_id, h.hostname, c.at, c.path, c.change, c.origin, c.from_path, c.old_sha256,
       c.new_sha256, c.package, c.package_version, c.package_matches
FROM public.file_changes c JOIN public.hosts h ON h.id = c.host_id;

CREATE VIEW hostwatch_views.process_events AS
SELECT e.id, e.host_id, h.hostname, e.at, e.kind, e.pid, e.ppid, e.name, e.exe, e.sha256,
       e.cmdline, e."user", e.uid, e.login_uid, e.session_id, e.start_time, e.ancestry, e.explained
FROM public.process_events e JOIN public.hosts h ON h.id = e.host_id;

CREATE VIEW hostwatch_views.socket_events AS
SELECT e.id, e.host_id, h.hostname, e.at, e.kind, e.socket, e.protocol, e.local_address,
       e.local_port, e.remote_address, e.remote_port, e.direction, e.pid, e.process, e.exe, e.netns
FROM public.socket_events e JOIN public.hosts h ON h.id = e.host_id;

CREATE VIEW hostwatch_views.findings AS
SELECT f.id, f.host_id, h.hostname, h.workload, f.kind, NULLIF(f.rule, '') AS rule, f.severity,
       f.subject, f.detail, f.status, f.first_seen, f.last_seen, f.opened_at, f.resolved_at,
       f.times_opened, f.occurrences, f.transient, f.ack_note, f.acked_by, f.acked_at,
       f.silenced_by
FROM public.findings f JOIN public.hosts h ON h.id = f.host_id;
