#!/usr/bin/env bash
# The main job, end to end: build, embed this repository's docs and sources through TARS, index them, search.
# Needs TARS_API_KEY (and TARS_API_BASE for an endpoint other than TARS). Dataset: target/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${TARS_API_KEY:?set TARS_API_KEY to your TARS API key}"
query=${1:-"how are failed requests retried?"}
dataset=target/quickstart

cargo build --release --locked --quiet
bin=target/release/tars-index
"$bin" embed README.md src tests benches --include '*.md' --include '*.rs' --out "$dataset" --overwrite
"$bin" index "$dataset"
echo "--- results for: $query"
"$bin" search "$dataset" "$query" -k 5
