-- What the agent's probe of a listener found (issue 19): does the service answer a client that
-- gives no credentials. NULL: not probed (no known protocol, probing off, an older agent).
ALTER TABLE listeners ADD COLUMN auth_verdict TEXT
    CHECK (auth_verdict IN ('authenticated', 'unauthenticated', 'local_only', 'unknown'));
ALTER TABLE listeners ADD COLUMN auth_service TEXT;
ALTER TABLE listeners ADD COLUMN auth_reason TEXT;
ALTER TABLE listeners ADD COLUMN auth_probed_at TIMESTAMPTZ;

CREATE OR REPLACE VIEW hostwatch_views.listeners AS
SELECT l.host_id, h.hostname, l.protocol, l.address, l.port, l.pid, l.process, l.exe, l.uid,
       l.netns, l.auth_verdict, l.auth_service, l.auth_reason, l.auth_probed_at
FROM public.listeners l JOIN public.hosts h ON h.id = l.host_id;
