-- Nothing to do: on plain PostgreSQL telemetry's time index has been a BRIN index since 0002
-- (the TimescaleDB file of this migration replaces the hypertable's default b-tree on time with one).
SELECT 1;
