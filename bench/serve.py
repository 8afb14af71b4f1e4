"""Serving under load: the one-sample endpoint (what a vBoN model is served with) against BoN
endpoints (N = 4 and 8) over the same model, swept over 1, 8, 32 and 64 concurrent clients.

At each level every endpoint gets 2 requests per client (at least 8; review openings,
`--max-tokens` tokens each; closed-loop clients on one asyncio client) on one replica with all
the machine's cores (`--cpus`), continuously batched with no batch-size or overload cut-off. Per
level it reports requests/s, sequences/s (N per BoN request), the mean batch (the most requests
each was decoded beside, `x-vbon-batch-size`), p50 and p95 latency, and the
one-sample / BoN requests/s ratio (goal at 64 clients: at least 0.8 N). Two more figures say
what bounds it: the engine ceiling, the same ratio for the bare `CompletionEngine` (no HTTP, no
Serve) generating one call of the rows each endpoint has in flight at that load; and, for the
one-sample endpoint streaming at one client, the time to its first token against the whole
answer's. Writes bench/results/serve.json and serve.png (throughput against load per endpoint).

    python bench/serve.py [--model builtin:smollm2-135m-instruct] [--clients 1 8 32 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import time
from pathlib import Path

import httpx
from ray import serve

from vbon.config import ModelConfig, ResourcesConfig, parse_workflow
from vbon.data.movie_reviews import review_openings
from vbon.models import resolve_model_path
from vbon.ray_runtime import ray_session
from vbon.serving.engine import CompletionEngine, Job
from vbon.serving.launch import serve_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(model: str, bon_n: int | None, port: int, cpus: float) -> str:
    cfg = parse_workflow(
        {
            "name": "bench",
            "model": {"name_or_path": model, "dtype": "bfloat16_if_native"},
            "reward": {"kind": "vader"},
            "serving": {
                "port": port,
                "bon_n": bon_n,
                "max_n": 8,
                "cpus_per_replica": cpus,
                "max_batch_size": 4096,
                "max_pending_requests": 4096,
            },
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
    """`concurrency` clients, each sending its next request when its last is answered, from one
    asyncio client with kept-alive connections (a load generator that costs the 2-core machine
    little beside the server it measures)."""

    async def clients() -> tuple[list[tuple[float, int]], float]:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:

            async def one(i: int) -> tuple[float, int]:
                start = time.perf_counter()
                body = {"model": "bench", "prompt": prompts[i], "max_tokens": max_tokens, "seed": i}
                r = await client.post(f"{url}/v1/completions", json=body)
                r.raise_for_status()
                return time.perf_counter() - start, int(r.headers["x-vbon-batch-size"])

            await one(0)  # warm-up, not counted
            todo = iter(range(len(prompts)))

            async def client_loop() -> list[tuple[float, int]]:
                return [await one(i) for i in todo]

            start = time.perf_counter()
            loops = await asyncio.gather(*(client_loop() for _ in range(concurrency)))
            return [r for loop in loops for r in loop], time.perf_counter() - start

    rows, wall = asyncio.run(clients())
    latencies, batches = zip(*rows, strict=True)
    latencies = sorted(latencies)
    return {
        "requests": len(prompts),
        "concurrency": concurrency,
        "mean_batch": statistics.mean(batches),
        "requests_per_s": len(prompts) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def first_token(url: str, prompts: list[str], max_tokens: int) -> dict:
    """One client streaming: p50 seconds to the first text chunk and to the end of the answer."""
    firsts, wholes = [], []
    for i, prompt in enumerate(prompts):
        body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "seed": i}
        start, first = time.perf_counter(), None
        with httpx.stream("POST", f"{url}/v1/completions", json=body | {"stream": True}) as r:
            for line in r.iter_lines():
                if first is None and line.startswith("data: {") and '"text": ""' not in line:
                    first = time.perf_counter() - start
        firsts.append(first)
        wholes.append(time.perf_counter() - start)
    return {
        "first_token_p50_s": statistics.median(firsts),
        "whole_p50_s": statistics.median(wholes),
    }


def engine_ceiling(model: str, clients: list[int], max_tokens: int, cpus: float) -> dict:
    """Per load, seconds of one bare `CompletionEngine.run` call with the rows each endpoint has
    in flight (c prompts x 1, x 4, x 8 samples), and the requests/s ratio that this allows."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    engine = CompletionEngine(ModelConfig(name_or_path=model, dtype="bfloat16"))
    openings = review_openings()
    out = {}
    for c in clients:
        seconds = {}
        for n in (1, 4, 8):
            jobs = [
                Job(
                    tuple(engine.tok(openings[i % len(openings)])["input_ids"]),
                    tuple(range(i * n, (i + 1) * n)),
                    max_tokens,
                    1.0,
                    1.0,
                )
                for i in range(c)
            ]
            start = time.perf_counter()
            engine.run(jobs)
            seconds[n] = time.perf_counter() - start
        out[c] = {f"seconds_{n}": t for n, t in seconds.items()} | {
            f"ratio_bon_{n}": seconds[n] / seconds[1] for n in (4, 8)
        }
        print(
            f"engine ceiling {c:>3} clients: one call of {c} / {4 * c} / {8 * c} rows takes "
            f"{seconds[1]:.2f} / {seconds[4]:.2f} / {seconds[8]:.2f} s: one-sample / BoN "
            f"requests/s at most {out[c]['ratio_bon_4']:.2f}x (N=4), "
            f"{out[c]['ratio_bon_8']:.2f}x (N=8)",
            flush=True,
        )
    return out


def plot(results: dict, clients: list[int], png: Path) -> None:
    """Requests/s and sequences/s against concurrent clients, one line per endpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label in ("one_sample", "bon_4", "bon_8"):
        for ax, key in zip(axes, ("requests_per_s", "sequences_per_s"), strict=True):
            ax.plot(clients, [r[key] for r in results[label]], marker="o", label=label)
    for ax, title in zip(axes, ("requests/s", "sequences/s"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--cpus", type=float, default=os.cpu_count(), help="per replica")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    openings = review_openings()
    results: dict = {}
    with ray_session(ResourcesConfig(), verbose=False):
        port = free_port()
        try:
            for label, bon_n in (("one_sample", None), ("bon_4", 4), ("bon_8", 8)):
                url = deploy(args.model, bon_n, port, args.cpus)
                if bon_n is None:
                    results["streaming"] = first_token(url, openings[:8], args.max_tokens)
                    print(
                        "one-sample streaming, 1 client: first token after "
                        f"{results['streaming']['first_token_p50_s']:.2f} s, whole answer "
                        f"{results['streaming']['whole_p50_s']:.2f} s (p50)",
                        flush=True,
                    )
                results[label] = []
                for c in args.clients:
                    prompts = [openings[i % len(openings)] for i in range(max(8, 2 * c))]
                    r = drive(url, prompts, c, args.max_tokens)
                    r["sequences_per_s"] = r["requests_per_s"] * (bon_n or 1)
                    results[label].append(r)
                    print(
                        f"{label:<10} {c:>3} clients {r['requests_per_s']:6.2f} req/s "
                        f"{r['sequences_per_s']:6.2f} seq/s  batch {r['mean_batch']:5.1f}  "
                        f"p50 {r['p50_s']:6.2f} s  p95 {r['p95_s']:6.2f} s",
                        flush=True,
                    )
        finally:
            serve.shutdown()
    for n in (4, 8):
        ratios = [
            one["requests_per_s"] / bon["requests_per_s"]
            for one, bon in zip(results["one_sample"], results[f"bon_{n}"], strict=True)
        ]
        results[f"ratio_one_sample_vs_bon_{n}"] = dict(zip(args.clients, ratios, strict=True))
        shown = "  ".join(
            f"{c} clients {r:.2f}x" for c, r in zip(args.clients, ratios, strict=True)
        )
        print(f"one-sample / BoN N={n} requests/s: {shown} (goal >= {0.8 * n:.1f}x)")
    results["engine_ceiling"] = engine_ceiling(
        resolve_model_path(args.model), args.clients, args.max_tokens, args.cpus
    )
    plot(results, args.clients, args.out / "serve.png")
    results["settings"] = vars(args) | {"out": str(args.out)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out / 'serve.json'} and {args.out / 'serve.png'}")


if __name__ == "__main__":
    main()
