"""The Athena table over the readings that the sync puts in S3 (`captaflow athena-ddl`).

Objects live where `agent.layout` puts them (``{prefix}/platform={p}/channel={c}/dt={YYYY-MM-DD}/
{session}-{part}.csv``), one header line then one reading per row in the columns of the
part's format version, no quoting. Formats only ever append columns, so the table declares the
current format's columns and LazySimpleSerDe reads the columns an older part lacks (``via`` in
a format-1 part) as NULL. Athena's
default CSV reader (LazySimpleSerDe) maps columns by position and parses the timestamps,
which the agent writes as java.sql.Timestamp text (``yyyy-MM-dd HH:mm:ss.SSS``, UTC).

Partitions are projected, not crawled: ``platform`` and ``channel`` are ``injected`` (a query
names them, e.g. ``WHERE platform = 'twitch' AND channel = 'xqcow'``) and ``dt`` is a date
range from 2024-01-01 to today, so new days and channels need no ``MSCK REPAIR`` or crawler.
"""

from __future__ import annotations

import re

from agent.checks import bucket_name, key_prefix, require
from agent.errors import SettingsError
from agent.layout import KEY_TEMPLATE, PARTITION_KEYS
from agent.vocab import DEFAULT_DISPLAYED, LABELS, PLATFORMS, READING_COLUMNS

# The text form of window_start/window_end (agent.vocab.format_timestamp), in Java's
# notation as Athena documents it.
TIMESTAMP_FORMAT = "yyyy-MM-dd HH:mm:ss.SSS"

# Athena forbids a partition column named like a data column, and the rows repeat the
# platform and channel that the key holds as partitions. LazySimpleSerDe reads columns by
# position, so the row's copies are declared under these names; the partition columns keep
# the plain names that queries filter on.
DATA_COLUMN_RENAMES: dict[str, str] = {"platform": "row_platform", "channel": "row_channel"}

PARTITION_COLUMNS: tuple[str, ...] = PARTITION_KEYS

DT_RANGE_START = "2024-01-01"

_COLUMN_TYPES: dict[str, str] = {
    "session_id": "STRING",
    "platform": "STRING",
    "channel": "STRING",
    "batch_id": "STRING",
    "seq": "BIGINT",
    "window_start": "TIMESTAMP",
    "window_end": "TIMESTAMP",
    "message_count": "INT",
    "scored_count": "INT",
    **{label: "DOUBLE" for label in LABELS},
    "dominant": "STRING",
    "model_id": "STRING",
    "agent_version": "STRING",
    "via": "STRING",
}

_COLUMN_COMMENTS: dict[str, str] = {
    "window_start": f"UTC, {TIMESTAMP_FORMAT}",
    "window_end": f"UTC, {TIMESTAMP_FORMAT}",
    "scored_count": "below message_count when the window was sampled to keep up",
    "dominant": "displayed label with the highest mean",
    "via": "bridge that carried the chat (streamerbot, ssn, ws), empty when read directly; "
    "NULL in parts of spool format 1",
}

_TABLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,254}$")


def data_columns() -> list[tuple[str, str]]:
    """(name, type) of each CSV column, in file order, as the table declares them."""
    return [(DATA_COLUMN_RENAMES.get(c, c), _COLUMN_TYPES[c]) for c in READING_COLUMNS]


def _check_table_name(value: str, what: str) -> str:
    if not _TABLE_RE.match(value):
        raise SettingsError(
            f"Athena {what} {value!r} is not valid: use lower-case letters, digits and '_' "
            "(for example 'captaflow_readings')"
        )
    return value


def s3_location(bucket: str, prefix: str) -> str:
    """``s3://bucket/prefix/`` with the prefix's slashes normalised; SettingsError if bad."""
    if not bucket.strip():
        raise SettingsError("no bucket given: set --bucket NAME (or sync.bucket)")
    name = require(bucket_name, bucket, "bucket", what_to_do="set --bucket")
    clean = require(key_prefix, prefix, "prefix", what_to_do="set --prefix")
    return f"s3://{name}/{clean}/" if clean else f"s3://{name}/"


# Stands in for the bucket when none is set: itself a valid bucket name, so the statement is
# checked like any other, and plain enough to search and replace.
PLACEHOLDER_BUCKET = "your-bucket"


def athena_ddl(
    bucket: str | None,
    prefix: str,
    table: str = "captaflow_readings",
    database: str | None = None,
) -> str:
    """The CREATE EXTERNAL TABLE statement for the readings under ``s3://bucket/prefix/``.

    Without a bucket (None or empty) the statement names `PLACEHOLDER_BUCKET` and its first
    line says to replace it."""
    placeholder = not (bucket or "").strip()
    location = s3_location(PLACEHOLDER_BUCKET if placeholder else str(bucket), prefix)
    name = f"`{_check_table_name(table, 'table')}`"
    if database is not None:
        name = f"`{_check_table_name(database, 'database')}`.{name}"
    width = max(len(column) for column, _ in data_columns()) + 2
    lines = []
    for original, (column, kind) in zip(READING_COLUMNS, data_columns(), strict=True):
        comment = _COLUMN_COMMENTS.get(original)
        if original in DATA_COLUMN_RENAMES:
            comment = f"copy of the partition column {original}, kept in each row"
        text = f"  {('`' + column + '`').ljust(width)} {kind}"
        if comment:
            text += f" COMMENT '{comment}'"
        lines.append(text)
    columns = ",\n".join(lines)
    template = location + KEY_TEMPLATE
    note = (
        f"-- No bucket is set: replace {PLACEHOLDER_BUCKET} below with the bucket the agent "
        "uploads to\n-- (or run `captaflow athena-ddl --bucket NAME`).\n"
        if placeholder
        else ""
    )
    # platform is an enum, not injected: Athena refuses a query on an injected column that
    # does not pin it with '=', and a multistream query groups by platform over all of them.
    # The set is closed: every source files a message under one of vocab.PLATFORMS.
    platform_values = ",".join(PLATFORMS)
    return f"""{note}-- CaptaFlow readings: one row per window of chat, written by the agent's sync.
-- Columns are read by position (LazySimpleSerDe). The CSV's own platform and channel are
-- named row_platform and row_channel because Athena forbids a data column named like a
-- partition column; filter on the partition columns platform, channel and dt.
-- Timestamps are UTC text {TIMESTAMP_FORMAT}, which LazySimpleSerDe parses as TIMESTAMP.
CREATE EXTERNAL TABLE IF NOT EXISTS {name} (
{columns}
)
PARTITIONED BY (
  `platform` STRING,
  `channel` STRING,
  `dt` STRING
)
ROW FORMAT DELIMITED
  FIELDS TERMINATED BY ','
  LINES TERMINATED BY '\\n'
STORED AS TEXTFILE
LOCATION '{location}'
TBLPROPERTIES (
  'skip.header.line.count' = '1',
  'projection.enabled' = 'true',
  'projection.platform.type' = 'enum',
  'projection.platform.values' = '{platform_values}',
  'projection.channel.type' = 'injected',
  'projection.dt.type' = 'date',
  'projection.dt.format' = 'yyyy-MM-dd',
  'projection.dt.range' = '{DT_RANGE_START},NOW',
  'projection.dt.interval' = '1',
  'projection.dt.interval.unit' = 'DAYS',
  'storage.location.template' = '{template}'
);
"""


def example_query(
    table: str = "captaflow_readings",
    platform: str = "twitch",
    channel: str = "xqcow",
    session_id: str = "SESSION_ID",
    displayed: tuple[str, ...] = DEFAULT_DISPLAYED,
) -> str:
    """A query that charts one stream's emotions over time (for the README)."""
    _check_table_name(table, "table")
    for label in displayed:
        if label not in LABELS:
            raise SettingsError(f"label {label!r} is not a model label; use some of {LABELS}")
    for what, value in (("platform", platform), ("channel", channel), ("session", session_id)):
        if not re.match(r"^[A-Za-z0-9_-]+$", value):
            raise SettingsError(f"{what} {value!r} is not valid: use letters, digits, '_', '-'")
    labels = ",\n  ".join(f'"{label}"' for label in displayed)
    return f"""SELECT
  window_start,
  {labels},
  dominant,
  message_count,
  scored_count
FROM {table}
WHERE platform = '{platform}'
  AND channel = '{channel}'
  AND session_id = '{session_id}'
ORDER BY window_start;
"""
