"""vbon's trainer against TRL's RLOOTrainer on the same CPU work: tokens per second and seconds per
step, with the ratio, for SmolLM2-135M-Instruct with its top 2 layers trained and with all layers.

Both run the same objective, KL-regularised RL on the raw VADER reward with RLOO (vbon's
`algorithm: kl_rl`, `estimator: rloo`; TRL's RLOO with the same beta), on the same prompts, with
the same prompts x samples per step, completion length, sampling settings (T = 1, no top-k or
top-p), learning rate, float32 weights and number of steps. vbon runs with 1 Ray Train worker
(1 core) and with 2 (1 core each); TRL runs in one process with 1 and with 2 torch threads. The
first `--warmup` steps of each run are left out; vbon's runs also record their step-time
breakdown (`phases_s`). TRL runs in its own environment
(`make bench-trl-env`: `.venv-trl`), so it never constrains vbon's pins.

Writes bench/results/train_vs_trl.json.

    python bench/train_vs_trl.py [--steps 6] [--trainable top_layers all]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from vbon.config import ResourcesConfig, parse_workflow
from vbon.data.prompts import load_prompts
from vbon.models.loading import resolve_model_path
from vbon.plots import read_steps
from vbon.ray_runtime import ray_session
from vbon.sampling.stage import run_sampling
from vbon.training.stage import run_training

MODEL = "builtin:smollm2-135m-instruct"
SHAPE = {
    "prompts_per_step": 8,
    "samples_per_prompt": 8,
    "max_new_tokens": 24,
    "beta": 0.05,
    "learning_rate": 1e-5,
    "top_layers": 2,
}


def workflow(trainable: str, workers: int, steps: int):
    return parse_workflow(
        {
            "n": 2,
            "m": 2,
            "model": {"name_or_path": MODEL, "dtype": "float32"},
            "data": {"max_prompts": SHAPE["prompts_per_step"] * steps, "test_fraction": 0.0},
            "evaluation": {"n_values": [1, 2]},
            "sampling": {"max_new_tokens": SHAPE["max_new_tokens"], "shard_size": 256},
            "resources": {"sampling_actors": 2, "train_workers": workers, "cpus_per_worker": 1},
            "training": {
                "algorithm": "kl_rl",
                "estimator": "rloo",
                "beta": SHAPE["beta"],
                "samples_per_prompt": SHAPE["samples_per_prompt"],
                "prompts_per_step": SHAPE["prompts_per_step"],
                "learning_rate": SHAPE["learning_rate"],
                "trainable": trainable,
                "top_layers": SHAPE["top_layers"],
                "steps": steps,
                "checkpoint_every": steps,
                "zero_stage": 2,
            },
        }
    )


def run_vbon(trainable: str, workers: int, steps: int, warmup: int, tmp: Path) -> dict:
    cfg = workflow(trainable, workers, steps)
    samples = run_sampling(cfg, tmp / "samples", progress=False)
    out = run_training(cfg, samples, tmp / f"vbon-{trainable}-{workers}")
    timed = read_steps(out / "metrics.jsonl")[warmup:]
    seconds = sum(s["step_s"] for s in timed)
    phases = {k: sum(s[k] for s in timed) / len(timed) for k in timed[0] if k.startswith("time_")}
    return {
        "phases_s": phases,
        "step_s": seconds / len(timed),
        "tokens_per_s": sum(s["tokens"] for s in timed) / seconds,
    }


def run_trl(python: str, trainable: str, threads: int, steps: int, warmup: int) -> dict:
    prompts = [p.text for p in load_prompts(workflow(trainable, 1, steps).data)]
    spec = SHAPE | {
        "model": resolve_model_path(MODEL),
        "prompts": prompts,
        "threads": threads,
        "trainable": trainable,
        "steps": steps,
        "warmup": warmup,
    }
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    script = Path(__file__).with_name("trl_rloo.py")
    done = subprocess.run(
        [python, str(script), json.dumps(spec)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        sys.exit(f"TRL run failed ({trainable}, {threads} threads): {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--trainable", nargs="+", default=["top_layers", "all"])
    parser.add_argument("--trl-python", default=".venv-trl/bin/python")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    if not Path(args.trl_python).is_file():
        sys.exit(f"no TRL environment at {args.trl_python}: run `make bench-trl-env` first")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    rows = []
    for trainable in args.trainable:
        trl = {t: run_trl(args.trl_python, trainable, t, args.steps, args.warmup) for t in (1, 2)}
        with ray_session(ResourcesConfig(), verbose=False), tempfile.TemporaryDirectory() as tmp:
            vbon = {w: run_vbon(trainable, w, args.steps, args.warmup, Path(tmp)) for w in (1, 2)}
        rows.append({"trainable": trainable, "trl_threads": trl, "vbon_workers": vbon})
    print(f"\n{'trainable':<11} {'run':<22} {'s/step':>7} {'tok/s':>7} {'vs TRL 1 thread':>16}")
    for row in rows:
        base = row["trl_threads"][1]["tokens_per_s"]
        runs = [(f"TRL RLOO, {t} thread(s)", r) for t, r in row["trl_threads"].items()]
        runs += [(f"vbon, {w} worker(s)", r) for w, r in row["vbon_workers"].items()]
        row["ratios_vs_trl_1_thread"] = {}
        for name, r in runs:
            ratio = r["tokens_per_s"] / base
            row["ratios_vs_trl_1_thread"][name] = ratio
            print(
                f"{row['trainable']:<11} {name:<22} {r['step_s']:>7.2f} "
                f"{r['tokens_per_s']:>7.1f} {ratio:>15.2f}x"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "train_vs_trl.json"
    out.write_text(json.dumps({"shape": SHAPE, "steps": args.steps, "runs": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
