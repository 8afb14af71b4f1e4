"""Serving cost: the one-sample endpoint (what a vBoN model is served with) against BoN endpoints
(N = 4 and 8) over the same model, under the same bounded load from localhost.

Every endpoint gets `--requests` completions (same prompts, `--max-tokens` tokens each) from
`--concurrency` client threads. A vBoN-trained policy has the reference's architecture, so the
one-sample endpoint here serves the reference itself: the cost per request is the same. Prints
requests/s, p50 and p95 latency and the ratio one-sample/BoN (goal: at least 0.8 N), and writes
bench/results/serve.json.

    python bench/serve.py [--model builtin:smollm2-135m-instruct] [--requests 48]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import time
from pathlib import Path

import httpx
from ray import serve

from vbon.config import ResourcesConfig, parse_workflow
from vbon.data.movie_reviews import review_openings
from vbon.models import resolve_model_path
from vbon.ray_runtime import ray_session
from vbon.serving.launch import serve_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(model: str, bon_n: int | None, port: int) -> str:
    cfg = parse_workflow(
        {
            "name": "bench",
            "model": {"name_or_path": model},
            "reward": {"kind": "vader"},
            "serving": {"port": port, "bon_n": bon_n, "max_n": 8, "max_batch_size": 16},
        }
    )
    url = serve_model(cfg, resolve_model_path(model))["url"]
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            time.sleep(0.3)


def drive(url: str, prompts: list[str], concurrency: int, max_tokens: int) -> dict:
    def one(i: int) -> float:
        start = time.perf_counter()
        body = {"model": "bench", "prompt": prompts[i], "max_tokens": max_tokens, "seed": i}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
        r.raise_for_status()
        return time.perf_counter() - start

    one(0)  # warm-up, not counted
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(pool.map(one, range(len(prompts))))
    wall = time.perf_counter() - start
    return {
        "requests": len(prompts),
        "requests_per_s": len(prompts) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    prompts = review_openings()[: args.requests]
    with ray_session(ResourcesConfig(), verbose=False):
        port, results = free_port(), {}
        try:
            for label, bon_n in (("one_sample", None), ("bon_4", 4), ("bon_8", 8)):
                url = deploy(args.model, bon_n, port)
                results[label] = drive(url, prompts, args.concurrency, args.max_tokens)
                r = results[label]
                print(
                    f"{label:<10} {r['requests_per_s']:6.2f} req/s  p50 {r['p50_s']:6.2f} s  "
                    f"p95 {r['p95_s']:6.2f} s",
                    flush=True,
                )
        finally:
            serve.shutdown()
    for n in (4, 8):
        ratio = results["one_sample"]["requests_per_s"] / results[f"bon_{n}"]["requests_per_s"]
        results[f"ratio_one_sample_vs_bon_{n}"] = ratio
        print(f"one-sample / BoN N={n}: {ratio:.2f}x requests/s (goal >= {0.8 * n:.1f}x)")
    results["settings"] = vars(args) | {"out": str(args.out)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out / 'serve.json'}")


if __name__ == "__main__":
    main()
