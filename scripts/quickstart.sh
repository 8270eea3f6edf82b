#!/usr/bin/env bash
# The first README command: install into .venv, then materialise the whole pipeline on the embedded
# defaults (SQLite telemetry database ./autopack.db, simulated LLM) and print where the results are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export DAGSTER_HOME="$PWD/.dagster_home"
mkdir -p "$DAGSTER_HOME"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
exec .venv/bin/autopack-telemetry pipeline "$@"
