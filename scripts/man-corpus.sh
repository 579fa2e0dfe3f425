#!/usr/bin/env bash
# Renders the first N English man pages of this machine as plain text files, one per page: the real corpus of the
# chunker and throughput benches (BENCHMARKS.md). Needs man (man-db) and groff; Debian images without manual pages
# have none to render.
#
#   scripts/man-corpus.sh [N] [DIR]      defaults: 1000, target/bench-corpus/man-N
set -euo pipefail

n="${1:-1000}"
dir="${2:-target/bench-corpus/man-$n}"
if [[ -f "$dir/.complete" ]]; then
  echo "$dir"
  exit 0
fi
command -v man >/dev/null || { echo "man-corpus: man is not installed" >&2; exit 1; }
mkdir -p "$dir"
count=0
# Sorted, so the same machine gives the same corpus; sections 1 and 8 are the command manuals.
while IFS= read -r page; do
  name="$(basename "$page" .gz)"
  if MANWIDTH=80 man --encoding=UTF-8 -l "$page" 2>/dev/null | col -bx > "$dir/$name.txt" && [[ -s "$dir/$name.txt" ]]; then
    count=$((count + 1))
  else
    rm -f "$dir/$name.txt"
  fi
  [[ $count -ge $n ]] && break
done < <(find /usr/share/man/man1 /usr/share/man/man8 -name '*.gz' 2>/dev/null | LC_ALL=C sort)
if [[ $count -lt $n ]]; then
  echo "man-corpus: only $count pages rendered, $n asked for" >&2
  exit 1
fi
touch "$dir/.complete"
echo "$dir"
