-- Core tables that are the same on TimescaleDB and plain PostgreSQL.
-- Times are timestamptz (UTC), positions WGS84 degrees, units in column names.

CREATE TABLE IF NOT EXISTS storage_info (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE IF NOT EXISTS vehicles (
    key            integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             text NOT NULL UNIQUE,          -- stable text id: drone-7, car-03
    kind           text NOT NULL,                 -- drone | patrol_car
    name           text,
    protocol       text,                          -- mavlink | mqtt | replay
    mavlink_sysid  integer,
    mqtt_client_id text,
    first_seen     timestamptz NOT NULL DEFAULT now(),
    last_seen      timestamptz NOT NULL DEFAULT now(),
    meta           jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Last state of each vehicle, kept current by the writer in the same transaction as the samples.
CREATE TABLE IF NOT EXISTS vehicle_latest (
    vehicle_key      integer PRIMARY KEY REFERENCES vehicles (key) ON DELETE CASCADE,
    time             timestamptz NOT NULL,  -- fix time: the vehicle's clock when it sends one, else received_at
    received_at      timestamptz NOT NULL,  -- when the gateway received it
    lat              double precision,      -- WGS84 degrees; NULL without a GPS fix
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

CREATE TABLE IF NOT EXISTS events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time        timestamptz NOT NULL,
    vehicle_key integer REFERENCES vehicles (key) ON DELETE CASCADE,
    type        text NOT NULL,             -- online | offline | mode_changed | alarm | sos | ...
    lat         double precision,
    lon         double precision,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS events_vehicle_time_idx ON events (vehicle_key, time DESC);
CREATE INDEX IF NOT EXISTS events_time_idx ON events (time DESC);

-- Everything that could not become telemetry, with its reason and raw bytes: nothing disappears silently.
CREATE TABLE IF NOT EXISTS rejected (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time    timestamptz NOT NULL,
    source  text NOT NULL,                  -- driver and link, e.g. mqtt, mavlink:udpin:0.0.0.0:14550
    reason  text NOT NULL,                  -- reason code, e.g. invalid_coordinates, bad_json
    vehicle text,
    topic   text,
    detail  text NOT NULL DEFAULT '',
    raw     bytea
);
CREATE INDEX IF NOT EXISTS rejected_time_idx ON rejected (time DESC);
CREATE INDEX IF NOT EXISTS rejected_reason_idx ON rejected (reason, time DESC);

-- Ids of committed writer batches: a batch replayed from the spool after a crash is skipped if already here.
CREATE TABLE IF NOT EXISTS ingest_batches (
    batch_id     uuid PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT now(),
    rows         integer NOT NULL
);
CREATE INDEX IF NOT EXISTS ingest_batches_committed_idx ON ingest_batches (committed_at);
