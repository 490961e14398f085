"""The hub's database schema: one list of versioned migrations, written for both backends.

Each migration is applied once, in order, inside one transaction, and recorded in
``schema_migrations``. A statement is either the same text for both backends or a pair
(SQLite, PostgreSQL). Types: SQLite keeps times as REAL (Unix seconds); PostgreSQL keeps the
alert time as ``timestamptz`` because ``alerts`` is partitioned by it (one partition a month,
made on demand by the store), everything else as ``double precision`` seconds.

Indexes serve the console's queries: alerts by office (site), signature, source, severity and
time (each with time second, so "the last week of X" is one index range); per-device seq order.
"""

from __future__ import annotations

from dataclasses import dataclass

Stmt = str | tuple[str, str]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[Stmt, ...]

    def sql(self, dialect: str) -> list[str]:
        out = []
        for s in self.statements:
            if isinstance(s, tuple):
                s = s[0] if dialect == "sqlite" else s[1]
            if s:
                out.append(s)
        return out


_ALERT_COLUMNS = """
    id TEXT NOT NULL,
    ts {ts} NOT NULL,
    device TEXT NOT NULL,
    site TEXT NOT NULL,
    seq BIGINT,
    received_at {real} NOT NULL,
    signature_id BIGINT,
    signature TEXT,
    category TEXT,
    severity INTEGER,
    src_ip TEXT,
    src_port INTEGER,
    dest_ip TEXT,
    dest_port INTEGER,
    proto TEXT,
    count INTEGER,
    eve {json} NOT NULL,
    PRIMARY KEY (id, ts)
"""

# Staged firmware rollouts (hub/rollout/): one row per rollout (its release, targets' plan and
# state), per wave (canaries are wave 0), per device (its job's state, versions, reason), and an
# event log (who paused it, which wave failed and why).
_ROLLOUTS = """CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    artifact TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    scope TEXT NOT NULL,
    wave_size INTEGER NOT NULL,
    threshold_kind TEXT NOT NULL,
    threshold_value {real} NOT NULL,
    job_timeout {real} NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    driver TEXT,
    driver_seen {real},
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL
)"""

_ROLLOUT_WAVES = """CREATE TABLE rollout_waves (
    rollout TEXT NOT NULL REFERENCES rollouts (id),
    wave INTEGER NOT NULL,
    canary INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    started_at {real},
    ended_at {real},
    PRIMARY KEY (rollout, wave)
)"""

_ROLLOUT_DEVICES = """CREATE TABLE rollout_devices (
    rollout TEXT NOT NULL REFERENCES rollouts (id),
    device TEXT NOT NULL,
    site TEXT NOT NULL,
    wave INTEGER NOT NULL,
    state TEXT NOT NULL,
    job TEXT,
    version_before TEXT,
    version TEXT,
    reason TEXT NOT NULL DEFAULT '',
    started_at {real},
    updated_at {real},
    PRIMARY KEY (rollout, device)
)"""

_ROLLOUT_EVENTS = """CREATE TABLE rollout_events (
    id {id},
    rollout TEXT NOT NULL REFERENCES rollouts (id),
    at {real} NOT NULL,
    device TEXT,
    event TEXT NOT NULL
)"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "devices, alerts (monthly partitions on PostgreSQL), gaps, telemetry, summaries, "
        "quarantine",
        (
            (
                """CREATE TABLE devices (
                    device TEXT PRIMARY KEY,
                    site TEXT NOT NULL,
                    first_seen REAL,
                    last_seen REAL,
                    state TEXT,
                    bd_seq BIGINT,
                    state_since REAL,
                    version TEXT,
                    intel_version TEXT,
                    mode TEXT,
                    leds TEXT,
                    fail_open_events BIGINT,
                    outbox_depth BIGINT,
                    telemetry_at REAL,
                    seq_high BIGINT NOT NULL DEFAULT 0,
                    alerts BIGINT NOT NULL DEFAULT 0,
                    status TEXT,
                    silent_since REAL
                )""",
                """CREATE TABLE devices (
                    device TEXT PRIMARY KEY,
                    site TEXT NOT NULL,
                    first_seen DOUBLE PRECISION,
                    last_seen DOUBLE PRECISION,
                    state TEXT,
                    bd_seq BIGINT,
                    state_since DOUBLE PRECISION,
                    version TEXT,
                    intel_version TEXT,
                    mode TEXT,
                    leds TEXT,
                    fail_open_events BIGINT,
                    outbox_depth BIGINT,
                    telemetry_at DOUBLE PRECISION,
                    seq_high BIGINT NOT NULL DEFAULT 0,
                    alerts BIGINT NOT NULL DEFAULT 0,
                    status JSONB,
                    silent_since DOUBLE PRECISION
                )""",
            ),
            (
                "CREATE TABLE alerts ("
                + _ALERT_COLUMNS.format(ts="REAL", real="REAL", json="TEXT")
                + ")",
                "CREATE TABLE alerts ("
                + _ALERT_COLUMNS.format(ts="timestamptz", real="DOUBLE PRECISION", json="JSONB")
                + ") PARTITION BY RANGE (ts)",
            ),
            "CREATE INDEX alerts_site_ts ON alerts (site, ts)",
            "CREATE INDEX alerts_signature_ts ON alerts (signature_id, ts)",
            "CREATE INDEX alerts_src_ts ON alerts (src_ip, ts)",
            "CREATE INDEX alerts_severity_ts ON alerts (severity, ts)",
            "CREATE INDEX alerts_ts ON alerts (ts)",
            "CREATE INDEX alerts_device_seq ON alerts (device, seq)",
            (
                """CREATE TABLE seq_gaps (
                    device TEXT NOT NULL, lo BIGINT NOT NULL, hi BIGINT NOT NULL,
                    opened_at REAL NOT NULL,
                    permanent INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (device, lo))""",
                """CREATE TABLE seq_gaps (
                    device TEXT NOT NULL, lo BIGINT NOT NULL, hi BIGINT NOT NULL,
                    opened_at DOUBLE PRECISION NOT NULL,
                    permanent INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (device, lo))""",
            ),
            (
                """CREATE TABLE telemetry (device TEXT NOT NULL, site TEXT NOT NULL,
                    ts REAL NOT NULL, received_at REAL NOT NULL, data TEXT NOT NULL)""",
                """CREATE TABLE telemetry (device TEXT NOT NULL, site TEXT NOT NULL,
                    ts DOUBLE PRECISION NOT NULL, received_at DOUBLE PRECISION NOT NULL,
                    data JSONB NOT NULL)""",
            ),
            "CREATE INDEX telemetry_device_ts ON telemetry (device, ts)",
            (
                """CREATE TABLE summaries (device TEXT NOT NULL, site TEXT NOT NULL,
                    day TEXT NOT NULL, received_at REAL NOT NULL, data TEXT NOT NULL,
                    PRIMARY KEY (device, day))""",
                """CREATE TABLE summaries (device TEXT NOT NULL, site TEXT NOT NULL,
                    day TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL,
                    data JSONB NOT NULL, PRIMARY KEY (device, day))""",
            ),
            (
                """CREATE TABLE quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT,
                    received_at REAL NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,
                    payload BLOB NOT NULL)""",
                """CREATE TABLE quarantine (id BIGSERIAL PRIMARY KEY,
                    received_at DOUBLE PRECISION NOT NULL, topic TEXT NOT NULL,
                    reason TEXT NOT NULL, payload BYTEA NOT NULL)""",
            ),
            (
                """CREATE TABLE hub_alerts (id INTEGER PRIMARY KEY AUTOINCREMENT,
                    device TEXT NOT NULL, site TEXT NOT NULL, kind TEXT NOT NULL,
                    text TEXT NOT NULL, raised_at REAL NOT NULL, cleared_at REAL)""",
                """CREATE TABLE hub_alerts (id BIGSERIAL PRIMARY KEY,
                    device TEXT NOT NULL, site TEXT NOT NULL, kind TEXT NOT NULL,
                    text TEXT NOT NULL, raised_at DOUBLE PRECISION NOT NULL,
                    cleared_at DOUBLE PRECISION)""",
            ),
            "CREATE INDEX hub_alerts_open ON hub_alerts (device, kind, cleared_at)",
        ),
    ),
    Migration(
        2,
        "rollouts: staged firmware rollouts, their waves, each device's job, events",
        (
            (
                _ROLLOUTS.format(real="REAL"),
                _ROLLOUTS.format(real="DOUBLE PRECISION"),
            ),
            (
                _ROLLOUT_WAVES.format(real="REAL"),
                _ROLLOUT_WAVES.format(real="DOUBLE PRECISION"),
            ),
            (
                _ROLLOUT_DEVICES.format(real="REAL"),
                _ROLLOUT_DEVICES.format(real="DOUBLE PRECISION"),
            ),
            (
                _ROLLOUT_EVENTS.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL"),
                _ROLLOUT_EVENTS.format(id="BIGSERIAL PRIMARY KEY", real="DOUBLE PRECISION"),
            ),
            "CREATE INDEX rollout_devices_wave ON rollout_devices (rollout, wave, device)",
            "CREATE INDEX rollout_events_rollout ON rollout_events (rollout, id)",
        ),
    ),
)

MIGRATIONS += (
    Migration(
        3,
        "indicators (regional indicators of hub/correlate; IF NOT EXISTS: older hubs made the "
        "table ad hoc)",
        (
            """CREATE TABLE IF NOT EXISTS indicators (id TEXT PRIMARY KEY, kind TEXT NOT NULL,
                value TEXT NOT NULL, state TEXT NOT NULL, offices INTEGER NOT NULL,
                evidence TEXT NOT NULL, first_seen DOUBLE PRECISION NOT NULL,
                last_seen DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL,
                decided_by TEXT, decided_at DOUBLE PRECISION, expires_at DOUBLE PRECISION)""",
            "CREATE INDEX IF NOT EXISTS indicators_state ON indicators (state, expires_at)",
        ),
    ),
    Migration(
        4,
        "seq_pending: new alerts' seqs, folded into the device rows set-based (Store.fold)",
        (
            (
                """CREATE TABLE seq_pending (device TEXT NOT NULL, site TEXT NOT NULL,
                    seq BIGINT, received_at REAL NOT NULL)""",
                """CREATE TABLE seq_pending (device TEXT NOT NULL, site TEXT NOT NULL,
                    seq BIGINT, received_at DOUBLE PRECISION NOT NULL)""",
            ),
            # Alerts stored before this version were already counted in their device rows.
        ),
    ),
)

LATEST = MIGRATIONS[-1].version
