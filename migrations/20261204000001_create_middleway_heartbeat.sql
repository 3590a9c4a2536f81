-- The replica heartbeat (DATABASE_READ_URLS): each service process writes
-- its own row on the primary every 250 ms and reads it on each replica to
-- measure their lag. Only the service writes here; rows of processes gone
-- for a day are deleted by the next one to start.
CREATE TABLE IF NOT EXISTS middleway_heartbeat (
  instance   VARCHAR(64)     NOT NULL PRIMARY KEY,
  seq        BIGINT UNSIGNED NOT NULL,
  written_at DATETIME(6)     NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=ascii;
