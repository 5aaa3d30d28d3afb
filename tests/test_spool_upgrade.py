"""The versioned spool across an upgrade, and sealed parts verified (issue 10 item 4, issue 12
case 5), run as a user runs the agent against moto's S3 server on 127.0.0.1.

- Parts sealed by the previous release (format 1: no `via` column, no checksum), and an open
  part it left behind when killed, are uploaded after the upgrade as they are, never set
  aside; the new parts are format 2; the report reads both.
- A sealed part garbled after sealing (one row, header intact) is caught by its checksum at
  start-up and by `captaflow sync` before the upload: it goes to corrupt/ with one line and
  never reaches the bucket; the report leaves it out and says so.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from agent.layout import FORMAT_COLUMNS, header_line, part_files
from agent.report import load_readings
from agent.spool import Spool
from tests.hostile import agent_env, write_recording
from tests.test_spool import reading

pytestmark = pytest.mark.network

V1 = header_line(1)


def _v1_part(readings: list[Any]) -> bytes:
    """A part exactly as the previous release wrote it: its header, no `via` column."""
    rows = [",".join(r.as_row()[: len(FORMAT_COLUMNS[1])]) + "\n" for r in readings]
    return V1 + "".join(rows).encode("ascii")


def _s3(env: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _objects(s3: Any, bucket: str) -> dict[str, bytes]:
    listing = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing}


def _cli(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(400)
def test_parts_of_the_old_format_reach_s3_after_the_upgrade(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    env = agent_env(tmp_path, **s3_server)
    bucket = f"upgrade-{uuid.uuid4().hex[:10]}"
    s3 = _s3(env)
    s3.create_bucket(Bucket=bucket)
    data_dir = tmp_path / "data"
    spool_dir = data_dir / "spool"
    partition = spool_dir / "sealed/platform=twitch/channel=xqcow/dt=2024-05-01"
    partition.mkdir(parents=True)
    old_sealed = {
        "s1-00001.csv": _v1_part([reading(i) for i in range(3)]),
        "s1-00002.csv": _v1_part([reading(i) for i in range(3, 5)]),
    }
    for name, data in old_sealed.items():
        (partition / name).write_bytes(data)
    # The old agent was killed while writing part 3: a row in flight at the end.
    crashed = _v1_part([reading(i) for i in range(5, 8)])
    (spool_dir / "open").mkdir()
    (spool_dir / "open/s1-00003.csv.open").write_bytes(crashed + b"s1,twitch,xqcow,0000")

    recording = tmp_path / "chat.jsonl"
    write_recording(recording, 120, spacing=0.5)
    run = _cli(
        "run", "--source", "replay", "--file", str(recording), "--speed", "max",
        "--data-dir", str(data_dir), "--model", str(tiny_bundle), "--quiet",
        "--bucket", bucket, "--prefix", "up", env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    synced = _cli(
        "sync", "--data-dir", str(data_dir), "--bucket", bucket, "--prefix", "up", env=env
    )
    assert synced.returncode == 0, synced.stderr

    objects = _objects(s3, bucket)
    base = "up/platform=twitch/channel=xqcow/dt=2024-05-01/"
    for name, data in old_sealed.items():
        assert objects[base + name] == data  # uploaded as it was: format 1, byte for byte
    assert objects[base + "s1-00003.csv"] == crashed  # recovered up to its last whole row
    new = {k: v for k, v in objects.items() if "/channel=hostile/" in k}
    assert new and all(v.startswith(header_line(2)) for v in new.values())
    assert len(objects) == 3 + len(new)
    assert not list((spool_dir / "corrupt").rglob("*")), "nothing of the old format set aside"
    assert not part_files(spool_dir, "sealed")

    readings = load_readings(spool_dir)
    old = readings[readings["session_id"] == "s1"]
    assert sorted(old["seq"]) == list(range(8)) and set(old["via"]) == {""}


@pytest.mark.timeout(400)
def test_a_part_garbled_after_sealing_is_set_aside_never_uploaded(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    env = agent_env(tmp_path, **s3_server)
    bucket = f"garbled-{uuid.uuid4().hex[:10]}"
    s3 = _s3(env)
    s3.create_bucket(Bucket=bucket)
    data_dir = tmp_path / "data"
    spool = Spool(data_dir / "spool", max_part_rows=4)
    for i in range(12):
        spool.append(reading(i))
    spool.seal_open()
    first, second, third = sorted(part_files(data_dir / "spool", "sealed"))

    def garble(path: Path) -> None:
        lines = path.read_bytes().splitlines(keepends=True)
        lines[2] = lines[2].replace(b",0.", b",7.", 1)  # one row, the header intact
        path.write_bytes(b"".join(lines))

    # Garbled while the agent is not running: `captaflow sync` catches it before the upload.
    garble(second)
    synced = _cli("sync", "--data-dir", str(data_dir), "--bucket", bucket, "--prefix", "g", env=env)
    assert synced.returncode == 0, synced.stderr
    (said,) = [line for line in synced.stderr.splitlines() if "corrupt" in line]
    assert second.name in said and "recorded when sealed" in said and "never uploaded" in said
    prefix = "g/platform=twitch/channel=xqcow/dt=2024-05-01/"
    assert sorted(_objects(s3, bucket)) == [prefix + first.name, prefix + third.name]
    assert [p.name for p in (data_dir / "spool" / "corrupt").rglob("*.csv")] == [second.name]

    # Garbled on disk before a start: the agent's start-up check sets it aside.
    spool = Spool(data_dir / "spool")
    for i in range(20, 23):
        spool.append(reading(i, session="s2"))
    fourth = spool.seal_open()
    assert fourth is not None
    garble(fourth)
    recording = tmp_path / "chat.jsonl"
    write_recording(recording, 30, spacing=0.5)
    run = _cli(
        "run", "--source", "replay", "--file", str(recording), "--speed", "max",
        "--data-dir", str(data_dir), "--model", str(tiny_bundle), "--quiet", env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    warned = [line for line in run.stderr.splitlines() if fourth.name in line]
    assert warned and "corrupt" in warned[0] and "never uploaded" in warned[0], run.stderr
    assert not fourth.exists()
    report = _cli("report", "--data-dir", str(data_dir), "--session", "s1",
                  "--out", str(tmp_path / "r.html"), env=env)  # fmt: skip
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "2 part(s) set aside in" in page
    shown = load_readings(data_dir / "spool")
    assert sorted(shown[shown["session_id"] == "s1"]["seq"]) == [0, 1, 2, 3, 8, 9, 10, 11]
