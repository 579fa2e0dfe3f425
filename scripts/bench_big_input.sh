#!/usr/bin/env bash
# Peak memory of `tars-index embed` on a large JSONL input, at two sizes: memory that stays flat as the input grows
# means the stages are joined by bounded streams. Against the tests' mock server in its own process (so its
# bookkeeping does not count), answering at once with 64-dimension vectors. Figures in BENCHMARKS.md.
#
#   scripts/bench_big_input.sh [MB ...]        default: 100 1024
set -euo pipefail
cd "$(dirname "$0")/.."

sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(100 1024)
work=target/bench-big
mkdir -p "$work"
cargo build --release --quiet
cargo bench --bench throughput --no-run --quiet 2>/dev/null

# The mock, serving until its stdin closes; it prints "BASE KEY CORPUS".
coproc MOCK { LATENCY_MS=0 CHUNKS=1 CORPUS_DIR="$work/mock" cargo bench --quiet --bench throughput -- serve; }
read -r base key _ <&"${MOCK[0]}"
trap 'exec {MOCK[1]}>&-; wait' EXIT

for mb in "${sizes[@]}"; do
  input="$work/corpus-${mb}mb.jsonl"
  if [[ ! -s "$input" ]]; then
    # Records of ~8 KB of prose made of common words, each with an id: MB megabytes in all.
    python3 - "$input" "$mb" <<'EOF'
import json, random, sys
path, mb = sys.argv[1], int(sys.argv[2])
words = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there been one all we their has would when if so no will more can who what up "
         "index vector search document embedding model token chunk query cluster graph layer batch memory").split()
rng = random.Random(mb)
target, written, i = mb * 1_000_000, 0, 0
with open(path, "w") as out:
    while written < target:
        paragraphs = []
        for _ in range(8):
            sentence = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(8, 20))).capitalize() + "."
            paragraphs.append(" ".join(sentence() for _ in range(8)))
        line = json.dumps({"id": f"r{i}", "text": "\n\n".join(paragraphs)}) + "\n"
        out.write(line)
        written += len(line)
        i += 1
EOF
  fi
  out="$work/ds-${mb}mb"
  rm -rf "$out"
  bytes=$(stat -c %s "$input")
  log="$work/time-${mb}mb.txt"
  TARS_API_BASE="$base" TARS_API_KEY="$key" /usr/bin/time -v target/release/tars-index embed "$input" --out "$out" \
    --id-field id --dimensions 64 -j 16 --batch-inputs 128 --no-index --json > "$work/report-${mb}mb.json" 2> "$log"
  rss=$(awk '/Maximum resident set size/ {print $6}' "$log")
  wall=$(awk '/Elapsed \(wall clock\)/ {print $8}' "$log")
  chunks=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['chunks']['embedded'])" "$work/report-${mb}mb.json")
  docs=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['documents']['new'])" "$work/report-${mb}mb.json")
  echo "input ${mb} MB (${bytes} bytes, ${docs} documents): ${chunks} chunks in ${wall}, peak RSS $((rss / 1024)) MiB"
done
