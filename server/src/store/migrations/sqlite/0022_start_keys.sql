-- The history's key indexes hold starts only. An exit's hash is its exec's and a close's remote
-- its open's: a question by hash or by block is answered by the starts (an end is found by its
-- process's or socket's key), and an exit or a close no longer costs a page of these indexes
-- (each delta's ingest cost, issue 16). Queries say `kind = 'exec'` or `kind = 'open'` to use
-- them (docs/queries.md).
DROP INDEX process_events_sha256;
CREATE INDEX process_events_sha256 ON process_events (sha256, at) WHERE sha256 IS NOT NULL AND kind = 'exec';
DROP INDEX socket_events_remote;
CREATE INDEX socket_events_remote ON socket_events (remote_key, at) WHERE remote_key IS NOT NULL AND kind = 'open';
