-- The EC2 instance a host proved itself to be at enrollment (its signed identity document), where
-- the collector checks them: a report claiming another instance is refused.
ALTER TABLE hosts ADD COLUMN verified_instance_id TEXT;
