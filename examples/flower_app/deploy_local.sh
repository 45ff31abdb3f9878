#!/usr/bin/env bash
# A SuperLink and four SuperNodes (one per hospital) on 127.0.0.1, then `flwr run` against
# them. The same thing as deploy_local.py, spelled out as the commands one would type.
#
#   examples/flower_app/deploy_local.sh [ROUNDS] [OUT]
#
# Needs bayes-pfl[flower] installed in the active environment. Every process started here is
# stopped on exit (trap), also when the run fails. Logs, FLWR_HOME and the hospital CSVs go to
# $WORK (default: a new temporary folder; nothing is written to the current folder), the
# result to OUT (default: $WORK/fit).
set -euo pipefail

ROUNDS=${1:-10}
WORK=$(realpath -m "${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/bayes-pfl-flower-XXXXXX")}")
OUT=$(realpath -m "${2:-$WORK/fit}")
APP=$(cd "$(dirname "$0")" && pwd)
echo "logs in $WORK"
PORT=${PORT:-9191}

export FLWR_HOME="$WORK/flwr-home" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
export JAX_PLATFORMS=cpu JAX_ENABLE_X64=1
mkdir -p "$FLWR_HOME" "$WORK/hospitals"

# one CSV per hospital: each SuperNode reads only its own
python - "$WORK/hospitals" <<'PY'
import sys
from bayes_pfl.datasets import HEART_DISEASE_HOSPITALS, load
df = load("heart_disease")
for h in HEART_DISEASE_HOSPITALS:
    df[df.hospital == h].to_csv(f"{sys.argv[1]}/{h}.csv", index=False)
PY

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait || true; }
trap cleanup EXIT INT TERM

flower-superlink --insecure --host 127.0.0.1 --port "$PORT" \
    --disable-runtime-dependency-installation >"$WORK/superlink.log" 2>&1 &
PIDS+=($!)
sleep 3

i=0
for h in cleveland hungary switzerland va; do
    flower-supernode --insecure --superlink "127.0.0.1:$PORT" --port $((PORT + 10 + i)) \
        --node-config "partition-id=$i data-path=\"$WORK/hospitals/$h.csv\"" \
        >"$WORK/supernode-$h.log" 2>&1 &
    PIDS+=($!)
    i=$((i + 1))
done

cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local-deployment"

[superlink.local-deployment]
address = "127.0.0.1:$PORT"
insecure = true
TOML

flwr run "$APP" local-deployment --stream \
    --run-config "rounds=$ROUNDS num-clients=4 out=\"$OUT\" jax-cache-dir=\"$WORK/jax-cache\""

# `flwr run --stream` can exit 0 although the ServerApp failed: the result folder decides
test -f "$OUT/run.json" || { echo "no result in $OUT; see $WORK/*.log" >&2; exit 1; }
echo "wrote $OUT (bayes-pfl report $OUT)"
