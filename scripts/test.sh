#!/usr/bin/env bash
# Runs the whole test suite. The interop test reads a dataset with pyarrow, DuckDB and Polars, so this first makes
# a Python virtualenv with them (once; kept in target/py-interop) and points the tests at it.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/py-interop
if ! "$venv/bin/python" -c "import pyarrow, duckdb, polars" 2>/dev/null; then
  echo "setting up $venv (pyarrow, duckdb, polars) for the interop test" >&2
  mkdir -p target
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check pyarrow duckdb polars
fi
export TARS_INDEX_PYTHON="$PWD/$venv/bin/python"
exec cargo test "$@"
