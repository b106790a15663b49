-- Credentials people manage: tokens and enroll secrets may expire; a secret assigns tags to the
-- hosts it enrolls, which keep them whatever they report. A host's tags as it reported them are
-- kept apart from the tags it is judged by (see `hosts.tags`).
ALTER TABLE api_tokens ADD COLUMN expires_at TEXT;
ALTER TABLE enroll_secrets ADD COLUMN expires_at TEXT;
ALTER TABLE enroll_secrets ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN enroll_secret_id INTEGER REFERENCES enroll_secrets (id);
ALTER TABLE hosts ADD COLUMN reported_tags TEXT NOT NULL DEFAULT '{}';
UPDATE hosts SET reported_tags = tags;
CREATE INDEX hosts_enroll_secret ON hosts (enroll_secret_id);
CREATE INDEX audit_log_at ON audit_log (at);
