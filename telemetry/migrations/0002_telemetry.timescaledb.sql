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

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry_1m
WITH (timescaledb.continuous) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
       vehicle_key,
       last(lat, time) AS last_lat,
       last(lon, time) AS last_lon,
       max(ground_speed_mps) AS max_speed_mps,
       min(battery_pct) AS min_battery_pct,
       count(*) AS samples
FROM telemetry
GROUP BY 1, 2
WITH NO DATA;
