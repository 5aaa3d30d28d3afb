"""The Athena table, checked against the spooled files as an SQL engine reads them (DuckDB
with hive partitioning stands in for Athena: both read the key's partitions and the CSV
columns by position)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from agent.athena import (
    DATA_COLUMN_RENAMES,
    TIMESTAMP_FORMAT,
    athena_ddl,
    data_columns,
    example_query,
    s3_location,
)
from agent.errors import SettingsError
from agent.spool import Spool
from agent.vocab import DEFAULT_DISPLAYED, LABELS, READING_COLUMNS, Reading

duckdb = pytest.importorskip("duckdb")

DAY1 = 1714557600.0  # 2024-05-01 10:00:00 UTC
DAY2 = DAY1 + 86400.0

# Java date pattern letters (as Athena documents TIMESTAMP text) -> DuckDB strptime
_JAVA_TO_DUCKDB = {"yyyy": "%Y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S"}
_ATHENA_TO_DUCKDB_TYPE = {
    "STRING": "VARCHAR",
    "BIGINT": "BIGINT",
    "INT": "INTEGER",
    "DOUBLE": "DOUBLE",
    "TIMESTAMP": "TIMESTAMP",
}


def duckdb_format(java: str) -> str:
    """Translate the DDL's Java timestamp pattern; SSS (milliseconds) is DuckDB's %g."""
    out = java.replace("SSS", "%g")
    for token, directive in _JAVA_TO_DUCKDB.items():
        out = out.replace(token, directive)
    return out


def reading(session: str, channel: str, seq: int, start: float) -> Reading:
    return Reading(
        session_id=session,
        platform="twitch",
        channel=channel,
        batch_id=f"{seq:020x}",
        seq=seq,
        window_start=start + 0.25,
        window_end=start + 9.987,
        message_count=10,
        scored_count=8,
        scores=tuple((i + 1) / 20 for i in range(len(LABELS))),
        dominant="surprise",
        model_id="cardiffnlp/twitter-roberta-base-emotion-multilabel-latest",
        agent_version="1.0.0",
    )


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """Sealed parts over two channels and two UTC dates, as the sync would upload them."""
    spool = Spool(tmp_path, max_part_rows=4)
    plan = [("s1", "alpha", DAY1, 6), ("s1", "alpha", DAY2, 3), ("s2", "beta", DAY2, 5)]
    seq = 0
    for session, channel, day, count in plan:
        for _ in range(count):
            spool.append(reading(session, channel, seq, day + 10.0 * seq))
            seq += 1
    spool.seal_open()
    return tmp_path


def connect_to_sealed(spool_dir: Path, view: str = "readings") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view over sealed/ typed exactly as the DDL declares."""
    columns = ", ".join(
        f"'{name}': '{_ATHENA_TO_DUCKDB_TYPE[kind]}'" for name, kind in data_columns()
    )
    pattern = (spool_dir / "sealed").as_posix() + "/**/*.csv"
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW {view} AS SELECT * FROM read_csv('{pattern}', hive_partitioning = true, "
        f"header = true, delim = ',', quote = '', columns = {{{columns}}}, "
        f"hive_types = {{'dt': 'VARCHAR'}}, "
        f"timestampformat = '{duckdb_format(TIMESTAMP_FORMAT)}')"
    )
    return con


def test_spooled_parts_read_as_the_ddl_declares(spool_dir: Path) -> None:
    with connect_to_sealed(spool_dir) as con:
        check_sealed_readings(con)


def check_sealed_readings(con: duckdb.DuckDBPyConnection) -> None:
    schema = con.execute("DESCRIBE readings").fetchall()
    names = [row[0] for row in schema]
    types = [row[1] for row in schema]
    declared = [name for name, _ in data_columns()]
    assert names[: len(declared)] == declared
    assert sorted(names[len(declared) :]) == ["channel", "dt", "platform"]
    assert dict(zip(names, types, strict=True))["window_start"] == "TIMESTAMP"

    counts = con.execute(
        "SELECT platform, channel, dt, count(*) AS n FROM readings "
        "GROUP BY ALL ORDER BY channel, dt"
    ).fetchall()
    assert counts == [
        ("twitch", "alpha", "2024-05-01", 6),
        ("twitch", "alpha", "2024-05-02", 3),
        ("twitch", "beta", "2024-05-02", 5),
    ]
    # the row's own copies agree with the partitions they were filed under
    mismatches = con.execute(
        "SELECT count(*) FROM readings WHERE row_platform <> platform OR row_channel <> channel"
    ).fetchall()
    assert mismatches == [(0,)]

    (first,) = con.execute(
        "SELECT window_start, window_end, message_count, scored_count, anger, trust, dominant "
        "FROM readings WHERE channel = 'alpha' AND seq = 0"
    ).fetchall()
    assert first[0] == datetime(2024, 5, 1, 10, 0, 0, 250000)  # milliseconds kept
    assert first[1] == datetime(2024, 5, 1, 10, 0, 9, 987000)
    assert first[2:4] == (10, 8)
    assert first[4] == pytest.approx(0.05) and first[5] == pytest.approx(0.55)
    assert first[6] == "surprise"


def test_the_example_query_runs_on_the_spooled_parts(spool_dir: Path) -> None:
    with connect_to_sealed(spool_dir, view="captaflow_readings") as con:
        query = example_query(platform="twitch", channel="alpha", session_id="s1")
        rows = con.execute(query).fetchall()
    assert len(rows) == 9
    starts = [row[0] for row in rows]
    assert starts == sorted(starts)
    assert len(rows[0]) == 1 + len(DEFAULT_DISPLAYED) + 3


def test_timestamp_text_matches_the_declared_format() -> None:
    # every character of the written text is accounted for by the declared pattern
    text = reading("s1", "alpha", 0, DAY1).as_row()[READING_COLUMNS.index("window_start")]
    pattern = re.escape(TIMESTAMP_FORMAT)
    for token in ("yyyy", "MM", "dd", "HH", "mm", "ss", "SSS"):
        pattern = pattern.replace(token, rf"\d{{{len(token)}}}")
    assert re.fullmatch(pattern, text), (text, TIMESTAMP_FORMAT)


def test_ddl_declares_every_column_in_order_and_the_projection() -> None:
    ddl = athena_ddl("my-bucket", "/captaflow/readings/", database="analytics")
    assert "CREATE EXTERNAL TABLE IF NOT EXISTS `analytics`.`captaflow_readings` (" in ddl
    body = ddl.split("(\n", 1)[1].split("\n)\n", 1)[0]
    declared = re.findall(r"^\s+`(\w+)`\s+(\w+)", body, flags=re.MULTILINE)
    expected_names = [DATA_COLUMN_RENAMES.get(c, c) for c in READING_COLUMNS]
    assert [name for name, _ in declared] == expected_names
    types = dict(declared)
    assert types["window_start"] == types["window_end"] == "TIMESTAMP"
    assert all(types[label] == "DOUBLE" for label in LABELS)
    assert types["message_count"] == types["scored_count"] == "INT"
    assert f"'UTC, {TIMESTAMP_FORMAT}'" in ddl

    partitions = ddl.split("PARTITIONED BY (", 1)[1].split(")", 1)[0]
    assert re.findall(r"`(\w+)` STRING", partitions) == ["platform", "channel", "dt"]
    assert not set(expected_names) & {"platform", "channel", "dt"}

    for prop in (
        "'skip.header.line.count' = '1'",
        "'projection.enabled' = 'true'",
        "'projection.platform.type' = 'enum'",
        "'projection.platform.values' = 'twitch,youtube,kick,tiktok,trovo,facebook,other'",
        "'projection.channel.type' = 'injected'",
        "'projection.dt.type' = 'date'",
        "'projection.dt.format' = 'yyyy-MM-dd'",
        "'projection.dt.range' = '2024-01-01,NOW'",
        "'storage.location.template' = "
        "'s3://my-bucket/captaflow/readings/platform=${platform}/channel=${channel}/dt=${dt}/'",
        "LOCATION 's3://my-bucket/captaflow/readings/'",
        "FIELDS TERMINATED BY ','",
    ):
        assert prop in ddl, prop


def test_the_template_matches_the_spool_layout(spool_dir: Path) -> None:
    ddl = athena_ddl("b-1", "p")
    template = re.search(r"'storage.location.template' = 's3://b-1/p/([^']+)'", ddl)
    assert template is not None
    sealed = sorted(
        p.parent.relative_to(spool_dir / "sealed").as_posix() + "/"
        for p in (spool_dir / "sealed").rglob("*.csv")
    )
    for key_dir in sealed:
        values = dict(part.split("=", 1) for part in key_dir.strip("/").split("/"))
        assert template.group(1).replace("${", "{").format(**values) == key_dir


@pytest.mark.parametrize(
    ("bucket", "prefix", "table"),
    [
        ("My_Bucket", "p", "t"),
        ("ok-bucket", "it's", "t"),
        ("ok-bucket", "p", "drop table;"),
    ],
)
def test_bad_names_are_settings_errors(bucket: str, prefix: str, table: str) -> None:
    with pytest.raises(SettingsError) as info:
        athena_ddl(bucket, prefix, table=table)
    assert "\n" not in str(info.value)


def test_empty_prefix_means_the_bucket_root() -> None:
    assert s3_location("my-bucket", "") == "s3://my-bucket/"
    assert s3_location("my-bucket", "a/b/") == "s3://my-bucket/a/b/"


def test_without_a_bucket_the_statement_names_a_valid_placeholder_and_via_comes_last() -> None:
    from agent.athena import PLACEHOLDER_BUCKET

    ddl = athena_ddl(None, "captaflow")
    assert ddl.startswith(f"-- No bucket is set: replace {PLACEHOLDER_BUCKET}")
    assert f"LOCATION 's3://{PLACEHOLDER_BUCKET}/captaflow/'" in ddl
    assert athena_ddl("", "") == athena_ddl(None, "")
    columns = re.findall(r"^  `(\w+)`\s+(\w+)", ddl.split("PARTITIONED BY")[0], re.M)
    assert columns[-1] == ("via", "STRING")  # appended: format-1 parts read it as NULL
    assert [name for name, _ in columns][:-1] == [
        DATA_COLUMN_RENAMES.get(c, c) for c in READING_COLUMNS[:-1]
    ]
