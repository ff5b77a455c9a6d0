-- TimescaleDB: a hypertable with compression and a 1-minute continuous aggregate.
-- {chunk_interval} is filled in from the storage settings (default '1 day').
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE TABLE IF NOT EXISTS telemetry (
    time             timestamptz NOT NULL,
    vehicle_key      integer NOT NULL,
    received_at      timestamptz NOT NULL,
    lat              double precision,
    lon              double precision,
    alt_msl_m        real,
    alt_rel_m        real,
    heading_deg      real,
    ground_speed_mps real,
    climb_mps        real,
    roll_deg         real,
    pitch_deg        real,
    yaw_deg          real,
    battery_pct      real,
    battery_v        real,
    mode             text,
    armed            boolean,
    gps_fix          smallint,
    satellites       smallint,
    link_quality_pct real,
    extra            jsonb
);
SELECT create_hypertable('telemetry', 'time', chunk_time_interval => INTERVAL {chunk_interval},
                         if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS telemetry_vehicle_time_idx ON telemetry (vehicle_key, time DESC);
ALTER TABLE telemetry SET (timescaledb.compress,
                           timescaledb.compress_segmentby = 'vehicle_key',
                           timescaledb.compress_orderby = 'time DESC');

-- Same shape and meaning as the plain-PostgreSQL view: real-time (materialized_only = false), so buckets the
-- refresh policy has not reached yet are computed from the raw rows instead of missing, and last_lat/last_lon
-- are the last *known* position in the minute (a sample without a GPS fix does not blank it).
CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
       vehicle_key,
       last(lat, time) FILTER (WHERE lat IS NOT NULL) AS last_lat,
       last(lon, time) FILTER (WHERE lon IS NOT NULL) AS last_lon,
       max(ground_speed_mps) AS max_speed_mps,
       min(battery_pct) AS min_battery_pct,
       count(*) AS samples
FROM telemetry
GROUP BY 1, 2
WITH NO DATA;
