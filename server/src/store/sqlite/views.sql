-- The views `hostwatch query` reads: the stable names and columns analysts query by, whatever the
-- tables underneath are called. Created as TEMP views on each read-only SQL connection (the temp
-- schema is searched first, so `hosts` here shadows the table `main.hosts`); the authorizer lets
-- a query read a table only through one of these. None of them reads a table of credentials
-- (node_keys, api_tokens, enroll_secrets) or the audit log. Times are RFC 3339 UTC text; JSON
-- columns hold text that json_extract() reads. {OFFLINE_SECONDS} is replaced with the
-- collector's rule for when a silent host is offline.

CREATE TEMP VIEW hosts AS
SELECT h.id, h.hostname, h.machine_id, h.instance_id, h.os, h.kernel, h.arch, h.workload,
       h.tags, h.reported_tags, h.agent_version, h.interval_secs,
       CASE WHEN h.retired_at IS NOT NULL THEN 'retired'
            WHEN h.goodbye IS NOT NULL THEN 'stopped'
            WHEN h.last_seen IS NOT NULL
                 AND (julianday('now') - julianday(h.last_seen)) * 86400.0 <= {OFFLINE_SECONDS}
                 THEN 'online'
            ELSE 'offline' END AS status,
       CASE WHEN h.coverage_degraded THEN 'degraded' ELSE 'full' END AS coverage,
       h.coverage_why, h.cloud, h.enrolled_at, h.last_seen, h.retired_at,
       (SELECT count(*) FROM main.findings f
         WHERE f.status IN ('open', 'acknowledged') AND f.host_id = h.id) AS open_findings
FROM main.hosts h;

CREATE TEMP VIEW processes AS
SELECT p.host_id, h.hostname, p.pid, p.ppid, p.name, p.exe, p.exe_deleted, p.sha256, p.cmdline,
       p.uid, p.user, p.login_uid, p.login_user, p.session_id, p.start_time, p.cgroup,
       p.container_id, p.unit, p.cpu_percent, p.rss_bytes, p.exe_memfd, p.exe_writable_dir,
       p.ancestry
FROM main.processes p JOIN main.hosts h ON h.id = p.host_id;

CREATE TEMP VIEW listeners AS
SELECT l.host_id, h.hostname, l.protocol, l.address, l.port, l.pid, l.process, l.exe, l.uid,
       l.netns, l.auth_verdict, l.auth_service, l.auth_reason, l.auth_probed_at
FROM main.listeners l JOIN main.hosts h ON h.id = l.host_id;

CREATE TEMP VIEW connections AS
SELECT c.host_id, h.hostname, c.protocol, c.local_address, c.local_port, c.remote_address,
       c.remote_port, c.direction, c.pid, c.process, c.exe, c.uid, c.netns, c.remote_key
FROM main.connections c JOIN main.hosts h ON h.id = c.host_id;

CREATE TEMP VIEW files AS
SELECT f.host_id, h.hostname, f.path, f.kind, f.mode, f.uid, f.gid, f.size, f.mtime, f.sha256,
       f.target, f.metadata_only, f.changed_at
FROM main.files f JOIN main.hosts h ON h.id = f.host_id;

CREATE TEMP VIEW file_changes AS
SELECT c.id, c.host_id, h.hostname, c.at, c.path, c.change, c.origin, c.from_path, c.old_sha256,
       c.new_sha256, c.package, c.package_version, c.package_matches
FROM main.file_changes c JOIN main.hosts h ON h.id = c.host_id;

CREATE TEMP VIEW process_events AS
SELECT e.id, e.host_id, h.hostname, e.at, e.kind, e.pid, e.ppid, e.name, e.exe, e.sha256,
       e.cmdline, e.user, e.uid, e.login_uid, e.session_id, e.start_time, e.ancestry, e.explained
FROM main.process_events e JOIN main.hosts h ON h.id = e.host_id;

CREATE TEMP VIEW socket_events AS
SELECT e.id, e.host_id, h.hostname, e.at, e.kind, e.socket, e.protocol, e.local_address,
       e.local_port, e.remote_address, e.remote_port, e.direction, e.pid, e.process, e.exe, e.netns,
       e.remote_key
FROM main.socket_events e JOIN main.hosts h ON h.id = e.host_id;

CREATE TEMP VIEW findings AS
SELECT f.id, f.host_id, h.hostname, h.workload, f.kind, NULLIF(f.rule, '') AS rule, f.severity,
       f.subject, f.detail, f.status, f.first_seen, f.last_seen, f.opened_at, f.resolved_at,
       f.times_opened, f.occurrences, f.transient, f.ack_note, f.acked_by, f.acked_at,
       f.silenced_by
FROM main.findings f JOIN main.hosts h ON h.id = f.host_id;
