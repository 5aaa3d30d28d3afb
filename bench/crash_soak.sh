#!/usr/bin/env bash
# Guarantee 4 soak: kill -9 the agent at 200 random instants (the default test run does 20),
# restart it each time, then check nothing was lost, counted twice or uploaded twice.
# Usage: bash bench/crash_soak.sh [ROUNDS] [SEED]   (about 5 s a round)
set -euo pipefail
cd "$(dirname "$0")/.."
CAPTAFLOW_CRASH_ROUNDS="${1:-200}" CAPTAFLOW_CRASH_SEED="${2:-1}" \
  python3 -m pytest tests/test_crash.py -s -q -p no:cacheprovider -o timeout=7200
