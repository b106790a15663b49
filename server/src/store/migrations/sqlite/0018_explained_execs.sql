-- Why an exec the history holds needed no finding, where a rule of its own kind says so: a
-- command of an allowed login session is "interactive session of USER".
ALTER TABLE process_events ADD COLUMN explained TEXT;
