#!/usr/bin/env python3
"""The same embedding job done by three clients against the same mock server and corpus, for BENCHMARKS.md.

    python3 -m venv target/bench-venv && target/bench-venv/bin/pip install litellm aiohttp tiktoken
    cargo build --release && cargo bench --bench throughput --no-run
    target/bench-venv/bin/python scripts/bench_clients.py [--concurrency 16] [--batch 16] [--latency-ms 50]

Clients:
- tars-index: `tars-index embed` (release build), the whole pipeline: read JSONL, chunk, batch, send, write Parquet.
- litellm: `litellm.aembedding` calls under an `asyncio.Semaphore`, vectors kept in memory.
- cookbook-style: written here after the design of openai-cookbook's api_request_parallel_processor.py (none of its
  code): a loop that every millisecond refills request and token capacity (cl100k counted with tiktoken) and starts
  one aiohttp task per request while capacity lasts, responses appended to a JSONL file. Its requests-per-minute is
  set to what `concurrency` requests in flight allow at the mock's latency, as a user of that script would. Its
  request capacity starts full (a minute's worth), so as designed it sends a small job all at once; it is run twice,
  with an added cap of `concurrency` requests in flight (like for like) and as designed.

The mock (`cargo bench --bench throughput -- serve`) answers after a fixed latency, with 1536-dimension vectors.
"""

import argparse
import asyncio
import base64
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

DIMENSIONS = 1536
MODEL = "text-embedding-3-small"


def offline_python_clients():
    """No machine here reaches the internet: LiteLLM uses its bundled price map, and tiktoken reads cl100k_base from
    the copy that the Rust crate tiktoken-rs ships (the same file), placed where tiktoken's cache looks for it."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return
    cache = os.path.abspath("target/bench-clients/tiktoken")
    os.makedirs(cache, exist_ok=True)
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    target = os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())
    if not os.path.exists(target):
        home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
        found = sorted(glob.glob(f"{home}/registry/src/*/tiktoken-rs-*/assets/cl100k_base.tiktoken"))
        if not found:
            sys.exit("cl100k_base.tiktoken not found: build tars-index first (it fetches tiktoken-rs)")
        with open(found[-1], "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())
    os.environ["TIKTOKEN_CACHE_DIR"] = cache


def batches(texts, size):
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def run_tars_index(binary, base, key, corpus, concurrency, batch):
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, TARS_API_BASE=base, TARS_API_KEY=key)
        started = time.perf_counter()
        result = subprocess.run(
            [binary, "embed", corpus, "--out", os.path.join(out, "ds"), "--json", "--quiet",
             "--id-field", "id", "--model", f"tars/{MODEL}", "--dimensions", str(DIMENSIONS),
             "-j", str(concurrency), "--batch-inputs", str(batch)],
            env=env, capture_output=True, text=True, check=False,
        )
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"tars-index failed: {result.stderr}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        return elapsed, report["chunks"]["embedded"]


async def run_litellm(base, key, texts, concurrency, batch):
    import litellm

    semaphore = asyncio.Semaphore(concurrency)

    async def one(inputs):
        async with semaphore:
            response = await litellm.aembedding(
                model=f"openai/{MODEL}", input=inputs, api_base=base, api_key=key, dimensions=DIMENSIONS,
                num_retries=3,
            )
            return [item["embedding"] for item in response.data]

    started = time.perf_counter()
    results = await asyncio.gather(*(one(b) for b in batches(texts, batch)))
    elapsed = time.perf_counter() - started
    vectors = [v for r in results for v in r]
    assert all(len(v) == DIMENSIONS for v in vectors), "wrong vector size"
    return elapsed, len(vectors)


async def run_cookbook_style(base, key, texts, concurrency, batch, latency_s, out_path, cap):
    import aiohttp
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base")
    url = f"{base}/embeddings"
    headers = {"Authorization": f"Bearer {key}"}
    # What `concurrency` requests in flight allow at this latency; tokens are not the limit here.
    max_rpm = concurrency / latency_s * 60.0
    max_tpm = 1e12
    requests = [{"model": MODEL, "input": b, "dimensions": DIMENSIONS, "encoding_format": "base64"}
                for b in batches(texts, batch)]
    pending = list(reversed(requests))
    retry = []
    in_progress = 0
    done = 0
    started_calls = finished_calls = 0
    request_capacity, token_capacity, last = max_rpm, max_tpm, time.time()

    async with aiohttp.ClientSession() as session:
        with open(out_path, "w") as out:

            async def call(request):
                nonlocal in_progress, done, finished_calls
                try:
                    async with session.post(url, headers=headers, json=request) as response:
                        body = await response.json()
                    if "error" in body:
                        raise RuntimeError(body["error"])
                    vectors = [base64.b64decode(item["embedding"]) for item in body["data"]]
                    assert all(len(v) == 4 * DIMENSIONS for v in vectors)
                    out.write(json.dumps([request, body]) + "\n")
                    done += len(vectors)
                    in_progress -= 1
                except Exception:
                    retry.append(request)
                finally:
                    finished_calls += 1

            started = time.perf_counter()
            next_request = None
            while True:
                if next_request is None:
                    if retry:
                        next_request = retry.pop()
                    elif pending:
                        next_request = pending.pop()
                        in_progress += 1
                now = time.time()
                request_capacity = min(request_capacity + max_rpm * (now - last) / 60.0, max_rpm)
                token_capacity = min(token_capacity + max_tpm * (now - last) / 60.0, max_tpm)
                last = now
                if next_request is not None and (cap is None or started_calls - finished_calls < cap):
                    tokens = sum(len(encoding.encode(t)) for t in next_request["input"])
                    if request_capacity >= 1 and token_capacity >= tokens:
                        started_calls += 1
                        request_capacity -= 1
                        token_capacity -= tokens
                        asyncio.create_task(call(next_request))
                        next_request = None
                if in_progress == 0 and not pending and not retry:
                    break
                await asyncio.sleep(0.001)
            elapsed = time.perf_counter() - started
    return elapsed, done


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--tars-index", default="target/release/tars-index")
    args = parser.parse_args()
    offline_python_clients()

    candidates = [p for p in glob.glob("target/release/deps/throughput-*") if os.access(p, os.X_OK) and "." not in os.path.basename(p)]
    if not candidates:
        sys.exit("build the mock first: cargo bench --bench throughput --no-run")
    server_binary = max(candidates, key=os.path.getmtime)
    env = dict(os.environ, LATENCY_MS=str(args.latency_ms), CHUNKS=str(args.chunks))
    server = subprocess.Popen([server_binary, "--bench", "serve"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        base, key, corpus = server.stdout.readline().split()
        texts = [json.loads(line)["text"] for line in open(corpus)]
        ideal = args.concurrency * args.batch / (args.latency_ms / 1000.0)
        print(f"{len(texts)} chunks, {args.batch} per request, {args.concurrency} in flight, "
              f"{args.latency_ms} ms latency; ideal {ideal:.0f} chunks/s")
        rows = []
        elapsed, n = run_tars_index(args.tars_index, base, key, corpus, args.concurrency, args.batch)
        rows.append(("tars-index embed (to Parquet)", elapsed, n))
        elapsed, n = asyncio.run(run_litellm(base, key, texts, args.concurrency, args.batch))
        rows.append(("litellm.aembedding + Semaphore", elapsed, n))
        for cap, name in [(args.concurrency, f"cookbook-style, {args.concurrency} in flight"),
                          (None, "cookbook-style as designed (no cap)")]:
            with tempfile.TemporaryDirectory() as tmp:
                elapsed, n = asyncio.run(run_cookbook_style(base, key, texts, args.concurrency, args.batch,
                                                            args.latency_ms / 1000.0, os.path.join(tmp, "out.jsonl"),
                                                            cap))
            rows.append((name, elapsed, n))
        ours = rows[0][2] / rows[0][1]
        print(f"{'client':<38} {'secs':>7} {'chunks/s':>9} {'of ideal':>9} {'tars-index is':>14}")
        for name, elapsed, n in rows:
            assert n == len(texts), f"{name}: {n} of {len(texts)} chunks"
            rate = n / elapsed
            print(f"{name:<38} {elapsed:>7.2f} {rate:>9.0f} {100 * rate / ideal:>8.1f}% {ours / rate:>13.2f}x")
    finally:
        server.stdin.close()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
