"""Times sentence-transformers on the texts of benches/local_model.rs, for the comparison in BENCHMARKS.md.

    HF_HUB_OFFLINE=1 python scripts/bench_sentence_transformers.py [MODEL_DIR]
Needs sentence-transformers (and torch). Prints embeddings/s and tokens/s per case and the process's peak RSS.
"""
import os
import resource
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

cache = os.environ.get("TARS_INDEX_MODELS") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tars-index", "models"
)
model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(cache, "all-minilm-l6-v2")
sentence = "The embedding pipeline reads documents, splits them into chunks, and writes vectors to Parquet files."


def texts(n, long):
    return [f"Note {i}: " + (" ".join([sentence] * 11) if long else sentence) for i in range(n)]


model = SentenceTransformer(model_dir, device="cpu")
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
for name, n, long in [("short_x64", 64, False), ("full_window_x32", 32, True)]:
    batch = texts(n, long)
    tokens = sum(len(model.tokenizer(t)["input_ids"]) for t in batch)
    assert max(len(model.tokenizer(t)["input_ids"]) for t in batch) <= 256
    model.encode(batch, batch_size=32)  # warm-up
    runs = []
    for _ in range(10):
        start = time.perf_counter()
        model.encode(batch, batch_size=32, normalize_embeddings=True)
        runs.append(time.perf_counter() - start)
    runs.sort()
    median = runs[len(runs) // 2]
    print(f"{name}: median {median * 1000:.1f} ms per {n} texts = {n / median:.1f} emb/s, {tokens / median:.0f} tokens/s "
          f"({tokens / n:.0f} tokens per text with [CLS]/[SEP])")
print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
