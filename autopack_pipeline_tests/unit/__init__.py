"""Fast tier: no subprocess, no database server, no network server (SQLite files in tmp_path are fine)."""
