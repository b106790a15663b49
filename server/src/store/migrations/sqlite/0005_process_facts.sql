-- What the agent knows of each process beyond its command line: executable hash and where it
-- lives, cgroup, container and systemd unit, CPU and memory.
ALTER TABLE processes ADD COLUMN sha256 TEXT;
ALTER TABLE processes ADD COLUMN exe_memfd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE processes ADD COLUMN exe_writable_dir INTEGER NOT NULL DEFAULT 0;
ALTER TABLE processes ADD COLUMN cgroup TEXT;
ALTER TABLE processes ADD COLUMN container_id TEXT;
ALTER TABLE processes ADD COLUMN unit TEXT;
ALTER TABLE processes ADD COLUMN cpu_percent REAL;
ALTER TABLE processes ADD COLUMN rss_bytes INTEGER;
ALTER TABLE process_events ADD COLUMN sha256 TEXT;
