-- Triage: who acknowledged a finding, when and why; the silence in force when it last opened.
ALTER TABLE findings ADD COLUMN ack_note TEXT;
ALTER TABLE findings ADD COLUMN acked_by TEXT;
ALTER TABLE findings ADD COLUMN acked_at TEXT;
ALTER TABLE findings ADD COLUMN silenced_by INTEGER;

-- Maintenance windows: one host, or every host whose tags hold the selector.
CREATE TABLE silences (
    id         INTEGER PRIMARY KEY,
    host_id    INTEGER REFERENCES hosts (id),
    selector   TEXT,
    starts_at  TEXT NOT NULL,
    ends_at    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_by TEXT NOT NULL,
    CHECK ((host_id IS NULL) <> (selector IS NULL))
);
CREATE INDEX silences_ends ON silences (ends_at);

-- The alert outbox: every opening, reopening, escalation and resolution, written in the
-- transaction that made it, read by each sink from its cursor. A sink down loses nothing; a
-- restart neither. AUTOINCREMENT: ids are never reused after pruning, so a cursor never skips.
CREATE TABLE alert_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    finding_id INTEGER NOT NULL REFERENCES findings (id),
    event      TEXT NOT NULL CHECK (event IN ('opened', 'reopened', 'escalated', 'resolved')),
    silenced   INTEGER NOT NULL DEFAULT 0,
    at         TEXT NOT NULL
);
-- Each sink's place in the outbox, and which collector holds it (a lease, so that several
-- collectors on one store deliver each event once).
CREATE TABLE alert_cursors (
    sink        TEXT PRIMARY KEY,
    last_id     INTEGER NOT NULL,
    leased_by   TEXT,
    lease_until TEXT
);
