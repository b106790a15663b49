-- What the package database says of the file now at a running process's deleted executable
-- (JSON: the owning package and whether the file is what it installed).
ALTER TABLE processes ADD COLUMN exe_replacement TEXT;
