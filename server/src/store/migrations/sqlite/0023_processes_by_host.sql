-- A host's processes stored together, in its key's order (a table WITHOUT ROWID, clustered on
-- host and pid). The engine reads a host's whole state after every report that changes it; with
-- rowids, its 300 processes were 300 lookups from the key's index into rows scattered over the
-- table by the order they arrived in, among the whole fleet's (issue 16: the collector's largest
-- cost per report). Writes lose a structure too: the key is the table.
CREATE TABLE processes_by_host (
    host_id          INTEGER NOT NULL REFERENCES hosts (id),
    pid              INTEGER NOT NULL,
    ppid             INTEGER NOT NULL,
    name             TEXT NOT NULL,
    exe              TEXT,
    exe_deleted      INTEGER NOT NULL DEFAULT 0,
    cmdline          TEXT NOT NULL DEFAULT '[]',
    uid              INTEGER NOT NULL,
    user             TEXT,
    start_time       TEXT NOT NULL,
    sha256           TEXT,
    exe_memfd        INTEGER NOT NULL DEFAULT 0,
    exe_writable_dir INTEGER NOT NULL DEFAULT 0,
    cgroup           TEXT,
    container_id     TEXT,
    unit             TEXT,
    cpu_percent      REAL,
    rss_bytes        INTEGER,
    exe_replaced     INTEGER NOT NULL DEFAULT 0,
    stdio_socket     TEXT,
    cpu_high_since   TEXT,
    judged_through   INTEGER NOT NULL DEFAULT 0,
    exe_replacement  TEXT,
    login_uid        INTEGER,
    session_id       INTEGER,
    ancestry         TEXT,
    login_user       TEXT,
    PRIMARY KEY (host_id, pid)
) WITHOUT ROWID;
INSERT INTO processes_by_host (host_id, pid, ppid, name, exe, exe_deleted, cmdline, uid, user, start_time,
    sha256, exe_memfd, exe_writable_dir, cgroup, container_id, unit, cpu_percent, rss_bytes, exe_replaced,
    stdio_socket, cpu_high_since, judged_through, exe_replacement, login_uid, session_id, ancestry, login_user)
SELECT host_id, pid, ppid, name, exe, exe_deleted, cmdline, uid, user, start_time,
    sha256, exe_memfd, exe_writable_dir, cgroup, container_id, unit, cpu_percent, rss_bytes, exe_replaced,
    stdio_socket, cpu_high_since, judged_through, exe_replacement, login_uid, session_id, ancestry, login_user
FROM processes;
DROP TABLE processes;
ALTER TABLE processes_by_host RENAME TO processes;
CREATE INDEX processes_hot ON processes (cpu_high_since) WHERE cpu_high_since IS NOT NULL;
CREATE INDEX processes_sha256 ON processes (sha256) WHERE sha256 IS NOT NULL;
CREATE INDEX processes_exe ON processes (exe);
