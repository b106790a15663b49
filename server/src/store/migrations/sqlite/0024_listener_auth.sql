-- What the agent's probe of a listener found (issue 19): does the service answer a client that
-- gives no credentials. NULL: not probed (no known protocol, probing off, an older agent).
ALTER TABLE listeners ADD COLUMN auth_verdict TEXT
    CHECK (auth_verdict IN ('authenticated', 'unauthenticated', 'local_only', 'unknown'));
ALTER TABLE listeners ADD COLUMN auth_service TEXT;
ALTER TABLE listeners ADD COLUMN auth_reason TEXT;
ALTER TABLE listeners ADD COLUMN auth_probed_at TEXT;
