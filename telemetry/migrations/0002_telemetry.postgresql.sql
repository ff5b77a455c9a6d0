-- Plain PostgreSQL >= 15: native daily range partitions, created ahead of time by the gateway.
-- No foreign key to vehicles: a per-row RI trigger would cost most of COPY's speed.
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
) PARTITION BY RANGE (time);
CREATE INDEX IF NOT EXISTS telemetry_time_brin ON telemetry USING brin (time);
CREATE INDEX IF NOT EXISTS telemetry_vehicle_time_idx ON telemetry (vehicle_key, time DESC);

-- Same shape as the TimescaleDB continuous aggregate, computed on read.
CREATE OR REPLACE VIEW telemetry_1m AS
SELECT date_trunc('minute', time) AS bucket,
       vehicle_key,
       (array_agg(lat ORDER BY time DESC) FILTER (WHERE lat IS NOT NULL))[1] AS last_lat,
       (array_agg(lon ORDER BY time DESC) FILTER (WHERE lon IS NOT NULL))[1] AS last_lon,
       max(ground_speed_mps) AS max_speed_mps,
       min(battery_pct) AS min_battery_pct,
       count(*) AS samples
FROM telemetry
GROUP BY 1, 2;
