-- Fleet queries answered by indexes: remote addresses as keys a CIDR block is one range of
-- (`addresses.rs`: 16 bytes, IPv4 mapped into IPv6), and the columns incident questions filter
-- the whole fleet by: a process's hash and executable, a listener's port and address, a
-- connection's remote, and in the history a hash and a remote (an executable's glob there is
-- read within the window, through the time index: one index fewer on the busiest table).
ALTER TABLE connections ADD COLUMN remote_key BLOB;
ALTER TABLE socket_events ADD COLUMN remote_key BLOB;
UPDATE connections SET remote_key = ip_key(remote_address);
UPDATE socket_events SET remote_key = ip_key(remote_address) WHERE remote_address IS NOT NULL;
CREATE INDEX connections_remote ON connections (remote_key);
CREATE INDEX socket_events_remote ON socket_events (remote_key, at) WHERE remote_key IS NOT NULL;
CREATE INDEX listeners_port ON listeners (port, address);
CREATE INDEX processes_sha256 ON processes (sha256) WHERE sha256 IS NOT NULL;
CREATE INDEX processes_exe ON processes (exe);
CREATE INDEX process_events_sha256 ON process_events (sha256, at) WHERE sha256 IS NOT NULL;
