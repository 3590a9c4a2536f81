-- The table middleway reads (API.md). Other systems write it.
CREATE TABLE IF NOT EXISTS transcriptions (
  transcription_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  call_id          VARCHAR(64)  NOT NULL,
  language         VARCHAR(16)  NOT NULL,
  status           ENUM('queued','in_progress','completed','failed') NOT NULL,
  duration_ms      INT UNSIGNED NULL,
  confidence       FLOAT        NULL,
  content          MEDIUMTEXT   NULL,
  created_at       DATETIME(3)  NOT NULL,
  updated_at       DATETIME(3)  NOT NULL,
  KEY idx_transcriptions_call_id (call_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
