#!/usr/bin/env bash
# Runs the whole test suite. First the set-up the tests need, each step done once and skipped when in place:
# - the embedded default model (scripts/fetch-model.sh), which the local-model tests load; they fail without it;
# - a Python virtualenv with pyarrow, DuckDB and Polars (target/py-interop) for the interop test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-model.sh

venv=target/py-interop
if ! "$venv/bin/python" -c "import pyarrow, duckdb, polars" 2>/dev/null; then
  echo "setting up $venv (pyarrow, duckdb, polars) for the interop test" >&2
  mkdir -p target
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check pyarrow duckdb polars
fi
export TARS_INDEX_PYTHON="$PWD/$venv/bin/python"
exec cargo test "$@"
