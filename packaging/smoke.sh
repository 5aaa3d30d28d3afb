#!/usr/bin/env bash
# Smoke test of a built executable, headless, the way a fresh machine would run it:
#
#     packaging/smoke.sh [EXE] [MODEL_DIR]
#
# EXE defaults to dist/captaflow/captaflow (the one-folder build). MODEL_DIR is an exported
# model bundle (`captaflow export-model --out DIR`, or `python -m model_export --tiny --out DIR`
# for a quick check); without it the executable must bring its own (`build.py --model DIR`).
# Runs `--version`, then `demo` (the shipped chat recording replayed through the whole flow)
# in a throw-away data folder, and checks that sealed CSV parts appeared.
set -euo pipefail

exe=dist/captaflow/captaflow; model=
if [[ $# -ge 2 ]]; then exe=$1; model=$2
elif [[ $# -eq 1 && -d $1 ]]; then model=$1
elif [[ $# -eq 1 ]]; then exe=$1
fi
[[ -x $exe ]] || { echo "smoke: no executable at $exe; run python packaging/build.py" >&2; exit 1; }
if [[ -n $model ]]; then
  [[ -f $model/manifest.json ]] || { echo "smoke: no model bundle at $model" >&2; exit 1; }
  model_flag=(--model "$model")
else
  model_flag=()  # the model packed into the executable
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# No user settings, no keyring, no S3: only what the executable itself brings.
export CAPTAFLOW_DATA_DIR="$work/data" CAPTAFLOW_CONFIG="$work/config.toml" CAPTAFLOW_NO_KEYRING=1
unset DISPLAY AWS_ENDPOINT_URL

version=$("$exe" --version)
echo "smoke: --version says: $version"

start=$(date +%s.%N)
"$exe" ${model_flag[@]+"${model_flag[@]}"} demo --speed max --quiet > "$work/demo.out" 2> "$work/demo.err" || {
  echo "smoke: demo failed:" >&2; cat "$work/demo.err" >&2; exit 1; }
end=$(date +%s.%N)

parts=$(find "$work/data/spool/sealed" -name '*.csv' | wc -l)
rows=$(find "$work/data/spool/sealed" -name '*.csv' -exec cat {} + | grep -vc '^session_id' || true)
echo "smoke: demo took $(awk "BEGIN{printf \"%.1f\", $end - $start}") s; $parts sealed part(s), $rows reading(s)"
if [[ $parts -lt 1 || $rows -lt 1 ]]; then
  echo "smoke: no sealed CSV parts with readings" >&2; cat "$work/demo.err" >&2; exit 1
fi
if find "$work/data/spool/open" -name '*.open' 2>/dev/null | grep -q .; then
  echo "smoke: an open part was left behind" >&2; exit 1
fi
echo "smoke: ok"
