"""Pure helpers of the benchmark (bench/peak.py, bench/capture_replay.py); no timing."""

from __future__ import annotations

import pytest

from bench.capture_replay import _lags
from bench.peak import kernel_family


@pytest.mark.parametrize(
    ("flags", "family"),
    [
        ({"avx2", "avx512bw", "avx512vl", "avx512_vnni", "amx_int8", "amx_tile"}, "AMX"),
        ({"avx2", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni"}, "AVX-512 VNNI"),
        ({"avx2", "avx_vnni"}, "AVX-VNNI"),
        ({"avx2", "avx512bw"}, "AVX-512 core"),
        ({"avx2"}, "AVX2"),
        (set(), "SSE"),
    ],
)
def test_kernel_family_follows_the_order_mlas_checks(flags: set[str], family: str) -> None:
    assert kernel_family(flags).startswith(family)


def test_lag_is_measured_from_when_the_window_end_was_replayed() -> None:
    # Messages sent at 0, 10, 20 (recorded s) were handed out at wall 100, 101, 102.
    delivered = [(0.0, 100.0), (10.0, 101.0), (20.0, 102.0)]
    # A window ending at 10 read at 101.5; one ending at 15 (between messages) at 103.
    lags = _lags(delivered, [(101.5, 10.0, 0.0), (103.0, 15.0, 0.0)])
    assert lags == pytest.approx([0.5, 1.5])
    assert _lags([], [(1.0, 2.0, 0.0)]) == []
