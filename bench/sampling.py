"""Sampling throughput: the Ray actor pool (1 and 2 actors) against single-process loops.

On the same prompts, model and settings: the vbon actor pool (timed once its actors have loaded
their models, as the loops below are, and also end to end with start-up), a single-process batched
`generate` loop over the same shards, and a naive loop drawing one sample at a time (timed on the
first prompts only: it is a rate). Prints samples
per second and ratios, and writes bench/results/sampling.json.

    python bench/sampling.py [--models builtin:tiny builtin:smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from vbon.config import ResourcesConfig, parse_workflow
from vbon.data.prompts import load_prompts
from vbon.models import load_causal_lm, load_tokenizer
from vbon.ray_runtime import ray_session
from vbon.sampling.generate import generate, row_seed
from vbon.sampling.stage import plan_shards, run_sampling


def workflow(model: str, prompts: int, actors: int):
    return parse_workflow(
        {
            "n": 4,
            "m": 8,
            "model": {"name_or_path": model},
            "data": {"max_prompts": prompts},
            "sampling": {"max_new_tokens": 16, "shard_size": 32},
            "resources": {"sampling_actors": actors},
        }
    )


def seeds(cfg, prompt_ids: list[int]) -> list[list[int]]:
    return [[row_seed(cfg.sampling.seed, i, j) for j in range(cfg.m)] for i in prompt_ids]


def time_pool(cfg) -> tuple[float, float]:
    """(end-to-end seconds, seconds after the actors had loaded their models)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_sampling(cfg, Path(tmp) / "samples", progress=False)
        total = time.perf_counter() - start
        manifest = json.loads((Path(tmp) / "samples" / "manifest.json").read_text())
        return total, manifest["timing"]["sampling_s"]


def time_batched(cfg, model, tok) -> float:
    start = time.perf_counter()
    for shard in plan_shards(load_prompts(cfg.data), cfg):
        generate(
            model,
            tok,
            [p.text for p in shard],
            seeds(cfg, [p.prompt_id for p in shard]),
            cfg.sampling,
        )
    return time.perf_counter() - start


def time_naive(cfg, model, tok, prompts: int) -> float:
    start = time.perf_counter()
    for p in load_prompts(cfg.data)[:prompts]:
        for seed in seeds(cfg, [p.prompt_id])[0]:
            generate(model, tok, [p.text], [[seed]], cfg.sampling)
    return time.perf_counter() - start


def bench_model(name: str, prompts: int, naive_prompts: int) -> dict:
    cfg = workflow(name, prompts, 1)
    samples = prompts * cfg.m
    model_cfg = cfg.model
    tok, model = load_tokenizer(model_cfg), load_causal_lm(model_cfg)
    pool1, pool1_warm = time_pool(cfg)
    pool2, pool2_warm = time_pool(workflow(name, prompts, 2))
    rates = {
        "naive_one_at_a_time": naive_prompts * cfg.m / time_naive(cfg, model, tok, naive_prompts),
        "single_process_batched": samples / time_batched(cfg, model, tok),
        "actor_pool_1": samples / pool1_warm,
        "actor_pool_2": samples / pool2_warm,
        "actor_pool_1_with_startup": samples / pool1,
        "actor_pool_2_with_startup": samples / pool2,
    }
    result = {
        "model": name,
        "prompts": prompts,
        "m": cfg.m,
        "max_new_tokens": cfg.sampling.max_new_tokens,
        "samples_per_s": rates,
        "ratio_pool2_vs_naive": rates["actor_pool_2"] / rates["naive_one_at_a_time"],
        "ratio_pool2_vs_batched": rates["actor_pool_2"] / rates["single_process_batched"],
        "ratio_pool2_vs_pool1": rates["actor_pool_2"] / rates["actor_pool_1"],
    }
    print(f"\n{name}: {prompts} prompts x M={cfg.m}, {cfg.sampling.max_new_tokens} new tokens")
    for k, v in rates.items():
        print(f"  {k:<24} {v:8.1f} samples/s")
    for k in ("ratio_pool2_vs_naive", "ratio_pool2_vs_batched", "ratio_pool2_vs_pool1"):
        print(f"  {k:<24} {result[k]:8.2f}x")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["builtin:tiny", "builtin:smollm2-135m-instruct"]
    )
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--naive-prompts", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with ray_session(ResourcesConfig(), verbose=False):
        torch.set_num_threads(2)
        results = [bench_model(m, args.prompts, args.naive_prompts) for m in args.models]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sampling.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out / 'sampling.json'}")


if __name__ == "__main__":
    main()
