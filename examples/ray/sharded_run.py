"""A sharded tars-index run on Ray: one task per shard, then the commit.

    pip install "ray[default]"
    python sharded_run.py /corpus s3://corpora/docs --shards 8

Each task runs the tars-index CLI on its shard (Ray retries a task whose worker died; a new attempt of a shard
re-pays nothing its earlier attempt embedded). The last shard to finish commits the run itself; the driver's
`tars-index commit` is the idempotent final step in case that shard died after recording itself done. The
environment (TARS_API_KEY, AWS_*) is passed to the workers through the runtime environment.
"""

import argparse
import os
import subprocess
import time

import ray

# TARS_INDEX_MIRROR_DIR: where a node keeps its copy of the dataset (tasks on one node may share it).
FORWARDED = ("TARS_API_KEY", "TARS_API_BASE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
             "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "TARS_INDEX_MIRROR_DIR")


@ray.remote(num_cpus=1, max_retries=3)
def shard(binary, corpus, dataset, index, count, run_id, extra):
    done = subprocess.run(
        [binary, "embed", corpus, "--out", dataset, "--shard", f"{index}/{count}", "--run-id", run_id, "--json", *extra],
        capture_output=True, text=True)
    if done.returncode == 2:
        # Permanent (bad settings): retrying cannot help.
        raise ValueError(f"shard {index}: {done.stderr.strip()}")
    if done.returncode != 0:
        raise RuntimeError(f"shard {index} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]  # the shard's JSON report


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus")
    parser.add_argument("dataset")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--run-id", default=f"ray-{int(time.time())}")
    parser.add_argument("--binary", default="tars-index")
    args, extra = parser.parse_known_args()

    env = {name: os.environ[name] for name in FORWARDED if name in os.environ}
    ray.init(runtime_env={"env_vars": env})
    reports = ray.get([
        shard.remote(args.binary, args.corpus, args.dataset, i, args.shards, args.run_id, extra)
        for i in range(args.shards)
    ])
    for report in reports:
        print(report)
    subprocess.run([args.binary, "commit", args.dataset, "--run-id", args.run_id], check=True)


if __name__ == "__main__":
    main()
