#!/usr/bin/env python3
"""The hnswlib half of `cargo bench --bench ann`: builds and searches the same vectors with the same parameters.

Reads the raw little-endian float32 files the bench wrote (base, queries) and its exact top-10 (uint32), builds
with 2 threads, searches one query batch per ef on 1 thread, and prints one JSON object to stdout.
"""
import json
import sys
import time
from importlib.metadata import version

import hnswlib
import numpy as np


def main():
    directory, dims, m, ef_construction = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    efs = [int(x) for x in sys.argv[5].split(",")]
    base = np.fromfile(f"{directory}/base.f32", dtype="<f4").reshape(-1, dims)
    queries = np.fromfile(f"{directory}/queries.f32", dtype="<f4").reshape(-1, dims)
    truth = np.fromfile(f"{directory}/truth.u32", dtype="<u4").reshape(len(queries), -1)[:, :10]

    index = hnswlib.Index(space="ip", dim=dims)
    index.init_index(max_elements=len(base), M=m, ef_construction=ef_construction, random_seed=100)
    index.set_num_threads(2)
    started = time.perf_counter()
    index.add_items(base, np.arange(len(base)))
    build = time.perf_counter() - started

    index.set_num_threads(1)
    searches = []
    for ef in efs:
        index.set_ef(ef)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            labels, _ = index.knn_query(queries, k=10, num_threads=1)
            best = min(best, time.perf_counter() - started)
        hits = sum(len(set(row) & set(t)) for row, t in zip(labels.tolist(), truth.tolist()))
        searches.append({"ef": ef, "recall": hits / (10 * len(queries)), "qps": len(queries) / best})
    print(json.dumps({"version": version("hnswlib"), "build_secs": build, "searches": searches}))


if __name__ == "__main__":
    main()
