"""Memory per worker when every weight of SmolLM2-135M-Instruct trains: 1, 2 and 4 Ray Train
workers (fractional CPUs on this machine), DeepSpeed ZeRO-2 and ZeRO-3, with and without CPU
offload. The baseline is the same stage and offload setting on 1 worker, measured in the run.

Per run it reports the largest worker's model states, counted tensor by tensor by the trainer
(`vbon.training.memory`): parameters of the policy and of the frozen reference, gradients,
optimizer state (fp32 master partitions and Adam's moments), and the worker's peak resident
memory; "other" is that peak minus the model states (activations, buffers, the Python and Ray
runtime). Each run trains 1 step on cached reference samples (reference forward, policy forward
and backward) and 1 on-policy step. Writes bench/results/memory.json and memory.png.

    python bench/memory.py [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from vbon.config import ResourcesConfig, parse_workflow
from vbon.plots import read_steps, stacked_bars
from vbon.ray_runtime import ray_session
from vbon.sampling.stage import run_sampling
from vbon.training.stage import run_training

MODEL = "builtin:smollm2-135m-instruct"
STATES = ["mem_params_mib", "mem_grads_mib", "mem_optimizer_mib"]


def workflow(workers: int, stage: int, offload: bool):
    return parse_workflow(
        {
            "n": 2,
            "m": 4,
            "model": {"name_or_path": MODEL, "dtype": "float32"},
            "data": {"max_prompts": 16, "test_fraction": 0.0},
            "evaluation": {"n_values": [1, 2]},
            "sampling": {"max_new_tokens": 8, "shard_size": 64},
            "resources": {
                "sampling_actors": 2,
                "train_workers": workers,
                "cpus_per_worker": 2 / workers,
            },
            "training": {
                "estimator": "rloo",
                "samples_per_prompt": 2,
                "prompts_per_step": 4,
                "steps": 2,
                "reference_steps": 1,
                "checkpoint_every": 2,
                "trainable": "all",
                "zero_stage": stage,
                "cpu_offload": offload,
            },
        }
    )


def measure(workers: int, stage: int, offload: bool, tmp: Path) -> dict:
    cfg = workflow(workers, stage, offload)
    samples = run_sampling(cfg, tmp / "samples", progress=False)
    out = run_training(cfg, samples, tmp / f"w{workers}-z{stage}-o{int(offload)}")
    steps = read_steps(out / "metrics.jsonl")
    row = {key: max(s[key] for s in steps) for key in [*STATES, "peak_mem_mib"]}
    row["model_states_mib"] = sum(row[k] for k in STATES)
    return {"workers": workers, "zero_stage": stage, "offload": offload} | row


def plot(rows: list[dict], png: Path) -> None:
    """Stacked bars per run: parameters, gradients, optimizer state, other."""
    labels = [f"Z{r['zero_stage']}{' off' if r['offload'] else ''}\n{r['workers']}w" for r in rows]
    parts = {k.removeprefix("mem_").removesuffix("_mib"): [r[k] for r in rows] for k in STATES}
    parts["other"] = [r["peak_mem_mib"] - r["model_states_mib"] for r in rows]
    title = "SmolLM2-135M, all layers trained: memory per worker"
    stacked_bars(labels, parts, "MiB per worker (largest worker)", title, png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    rows = []
    with ray_session(ResourcesConfig(), verbose=False), tempfile.TemporaryDirectory() as tmp:
        for stage in (3, 2):  # ZeRO-3 first: the stage that partitions parameters
            for offload in (False, True):
                for workers in args.workers:
                    rows.append(measure(workers, stage, offload, Path(tmp)))
                    print(json.dumps(rows[-1]), flush=True)
    base = {(r["zero_stage"], r["offload"]): r for r in rows if r["workers"] == args.workers[0]}
    print(
        f"\n{'ZeRO':>4} {'offload':>7} {'workers':>7} {'params':>7} {'grads':>7} {'optim':>7} ",
        end="",
    )
    print(f"{'states':>7} {'peak RSS':>8} {'states vs 1w':>12}")
    for r in rows:
        r["states_ratio"] = (
            r["model_states_mib"] / base[r["zero_stage"], r["offload"]]["model_states_mib"]
        )
        print(
            f"{r['zero_stage']:>4} {r['offload']!s:>7} {r['workers']:>7} "
            + " ".join(f"{r[k]:>7.0f}" for k in [*STATES, "model_states_mib"])
            + f" {r['peak_mem_mib']:>8.0f} {r['states_ratio']:>11.2f}x"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps({"runs": rows}, indent=2))
    plot(rows, args.out / "memory.png")
    print(f"wrote {args.out / 'memory.json'} and {args.out / 'memory.png'}")


if __name__ == "__main__":
    main()
