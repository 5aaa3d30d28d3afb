"""Guarantee 4: kill -9 at any instant, restart, and nothing is lost or counted twice.

The agent runs as a separate process on a replay source with uploads to a real S3 server on
127.0.0.1 (moto). It is killed with SIGKILL at random instants (20 times here;
`CAPTAFLOW_CRASH_ROUNDS=200 python -m pytest tests/test_crash.py` runs 200), restarted each
time, then run to the end. The checks: no message counted in two readings, no sealed reading
lost, no reading in two parts, no part in two S3 objects.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.vocab import READING_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "agent" / "data" / "demo_chat.jsonl"

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="SIGKILL semantics; Windows uses TerminateProcess"
)


def _agent_cmd(data_dir: Path, model: Path, bucket: str, speed: str) -> list[str]:
    return [
        sys.executable, "-m", "agent", "run",
        "--source", "replay", "--file", str(DEMO), "--speed", speed,
        "--data-dir", str(data_dir), "--model", str(model),
        "--bucket", bucket, "--prefix", "crash", "--quiet",
    ]  # fmt: skip


def _read_parts(spool: Path) -> dict[Path, list[list[str]]]:
    parts: dict[Path, list[list[str]]] = {}
    for folder in ("sealed", "uploaded"):
        for path in sorted((spool / folder).rglob("*.csv")):
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
            assert rows[0] == list(READING_COLUMNS), f"{path} has a bad header"
            parts[path] = rows[1:]
    return parts


@pytest.mark.timeout(900)
def test_kill_9_at_random_instants_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, tiny_bundle: Path, s3_server: dict[str, str]
) -> None:
    rounds = int(os.environ.get("CAPTAFLOW_CRASH_ROUNDS", "20"))
    rng = random.Random(int(os.environ.get("CAPTAFLOW_CRASH_SEED", "4")))
    data_dir = tmp_path / "data"
    env = {**os.environ, **s3_server, "CAPTAFLOW_CONFIG": str(tmp_path / "none.toml")}
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket="crashes")
    # The recording is 785 s long: at 120x a full run takes ~7 s plus start-up, so kills land
    # everywhere (start-up, recovery, mid-stream, during seals and uploads).
    cmd = _agent_cmd(data_dir, tiny_bundle, "crashes", "120")
    kills = 0
    log = tmp_path / "agent-stderr.log"
    for _ in range(rounds):
        with log.open("wb") as stderr:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                proc.wait(timeout=rng.uniform(0.3, 8.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                kills += 1
        if proc.returncode not in (0, -signal.SIGKILL):
            pytest.fail(f"agent exited {proc.returncode}: {log.read_text()[-2000:]}")
    assert kills > 0
    # The last run goes to the end of the recording; then everything waiting is uploaded.
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    synced = subprocess.run(
        [sys.executable, "-m", "agent", "sync", "--data-dir", str(data_dir),
         "--bucket", "crashes", "--prefix", "crash"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr

    journal = sqlite3.connect(data_dir / "journal.sqlite3")
    total_messages = journal.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    scorable = journal.execute("SELECT COUNT(*) FROM messages WHERE scorable = 1").fetchone()[0]
    unassigned = journal.execute(
        "SELECT COUNT(*) FROM messages WHERE scorable = 1 AND batch_id IS NULL"
    ).fetchone()[0]
    written = {
        row[0] for row in journal.execute("SELECT batch_id FROM batches WHERE state = 'written'")
    }
    not_written = journal.execute(
        "SELECT COUNT(*) FROM batches WHERE state != 'written'"
    ).fetchone()[0]
    journal.close()
    expected_lines = len(DEMO.read_text(encoding="utf-8").splitlines())
    assert total_messages == expected_lines  # every message journaled once (dedup on id)
    assert unassigned == 0 and not_written == 0

    parts = _read_parts(data_dir / "spool")
    assert not list((data_dir / "spool" / "sealed").rglob("*.csv")), "all parts uploaded"
    batch_col = READING_COLUMNS.index("batch_id")
    count_col = READING_COLUMNS.index("message_count")
    batch_ids = [row[batch_col] for rows in parts.values() for row in rows]
    assert len(batch_ids) == len(set(batch_ids)), "a reading is in two parts"
    assert set(batch_ids) == written, "a sealed reading was lost (or an unknown one appeared)"
    counted = sum(int(row[count_col]) for rows in parts.values() for row in rows)
    assert counted == scorable, "a message was counted twice, or not at all"

    objects = s3.list_objects_v2(Bucket="crashes", Prefix="crash/").get("Contents", [])
    keys = sorted(obj["Key"] for obj in objects)
    uploaded_root = data_dir / "spool" / "uploaded"
    expected_keys = sorted("crash/" + path.relative_to(uploaded_root).as_posix() for path in parts)
    assert keys == expected_keys, "a part is in two S3 objects, or missing"
    for path in parts:
        key = "crash/" + path.relative_to(uploaded_root).as_posix()
        body = s3.get_object(Bucket="crashes", Key=key)["Body"].read()
        assert body == path.read_bytes()
    print(
        f"\ncrash test: {rounds} rounds, {kills} kills, {total_messages} messages, "
        f"{len(batch_ids)} readings in {len(parts)} parts, {len(keys)} S3 objects"
    )
