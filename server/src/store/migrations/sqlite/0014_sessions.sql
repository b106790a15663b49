-- The session a host's agent reported under before its current one: a report of that earlier
-- session after a newer one began means two agents share one node key (a cloned disk).
ALTER TABLE hosts ADD COLUMN prior_session INTEGER;
