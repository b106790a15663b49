-- The agent's own account of itself (exec source, socket reader, events, spool, RSS, CPU), as JSON.
ALTER TABLE hosts ADD COLUMN agent_stats TEXT;
