"""Fidelity to BoN on real text: of the fine-tuning methods, does vBoN come closest to BoN?

One command, on `workflows/fidelity.yaml` (SmolLM2-135M-Instruct, VADER reward, movie-review
openings, M reference samples per prompt): sample once; for each N train vBoN (l1 and exact
rewards) and BoN-SFT, plus KL-regularised RL on the raw reward at several beta (beta does not
depend on N), all with the same trainer and the same number of policy updates; evaluate every
policy and BoN at every N on the held-out prompts. Writes bench/results/fidelity/ (results.json,
results.md, the Pareto PNGs) and fidelity.json with, per N, vBoN's win rate as a share of BoN's
and whether vBoN is on the win-rate-vs-KL Pareto front.

    python bench/fidelity.py            # about an hour on 2 CPU cores
    python bench/fidelity.py --scale    # paper size, for a GPU cluster (resources from the file)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import ray

from vbon.config import WorkflowConfig, load_workflow, parse_workflow
from vbon.evaluation.stage import run_evaluation
from vbon.sampling.stage import run_sampling
from vbon.training.stage import run_training

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"n_values": [2, 4, 8], "betas": [0.05, 0.2, 0.5]}
SCALE = {
    "n_values": [2, 4, 8, 16, 32],
    "betas": [0.01, 0.03, 0.1, 0.3, 1.0],
    "overrides": {
        "m": 128,
        "data": {"max_prompts": 2000, "test_fraction": 0.1},
        "sampling": {"max_new_tokens": 40, "batch_size": 512},
        "training": {"steps": 300, "prompts_per_step": 64, "trainable": "all", "optimizer": "ppo",
                     "samples_per_prompt": 1, "ppo_epochs": 4, "learning_rate": 1.41e-5},
        "evaluation": {"n_values": [1, 2, 4, 8, 16, 32, 64, 128], "samples_per_prompt": 8},
        "resources": {"sampling_actors": 8, "gpus_per_actor": 1, "train_workers": 8,
                      "gpus_per_worker": 1},
    },
}  # fmt: skip


def variant(base: WorkflowConfig, **changes) -> WorkflowConfig:
    """The base workflow with some sections (or top-level keys) changed, validated again."""
    raw = base.model_dump(mode="json")
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return parse_workflow(raw, "fidelity variant")


def methods(base: WorkflowConfig, n_values: list[int], betas: list[float]) -> dict:
    """Label -> workflow, one per trained policy."""
    out = {}
    for n in n_values:
        for reward in ("l1", "exact"):
            t = {"algorithm": "vbon", "vbon_reward": reward, "beta": None}
            out[f"vBoN-{reward} N={n}"] = variant(base, n=n, training=t)
        out[f"BoN-SFT N={n}"] = variant(base, n=n, training={"algorithm": "bon_sft", "beta": None})
    for beta in betas:
        out[f"KL-RL beta={beta:g}"] = variant(base, training={"algorithm": "kl_rl", "beta": beta})
    return out


def claim(rows: dict, n: int) -> dict:
    """vBoN-l1's win rate as a share of BoN's at n, and who is on the Pareto front."""
    bon = rows[f"BoN N={n}"]["win_rate"]["mean"]
    out = {}
    for reward in ("l1", "exact"):
        r = rows[f"vBoN-{reward} N={n}"]
        out[f"vbon_{reward}_win_share_of_bon"] = r["win_rate"]["mean"] / bon
        out[f"vbon_{reward}_on_pareto_front"] = r["pareto_win_rate"]
    sft = rows[f"BoN-SFT N={n}"]
    out["bon_sft_win_share_of_bon"] = sft["win_rate"]["mean"] / bon
    out["bon_sft_on_pareto_front"] = sft["pareto_win_rate"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", type=Path, default=ROOT / "workflows" / "fidelity.yaml")
    parser.add_argument("--scale", action="store_true", help="paper size (GPU cluster)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fidelity")
    args = parser.parse_args()
    plan = SCALE if args.scale else SMALL
    base = load_workflow(args.workflow)
    if args.scale:
        base = variant(base, **plan["overrides"])
    run = Path(base.run_dir) / base.name
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    ray.init(address=base.resources.ray_address, include_dashboard=False, log_to_driver=False)
    timing, start = {}, time.perf_counter()
    try:
        samples = run_sampling(base, run / "samples")
        timing["sampling_s"] = time.perf_counter() - start
        policies = {}
        for label, cfg in methods(base, plan["n_values"], plan["betas"]).items():
            began = time.perf_counter()
            folder = run / "train" / label.replace(" ", "_").replace("=", "")
            policies[label] = run_training(cfg, samples, folder) / "model"
            timing[f"train {label}_s"] = time.perf_counter() - began
            print(f"trained {label} in {timing[f'train {label}_s']:.0f} s", flush=True)
        began = time.perf_counter()
        out = run_evaluation(base, samples, policies, args.out)
        timing["evaluation_s"] = time.perf_counter() - began
    finally:
        ray.shutdown()
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    summary = {"claim": {n: claim(rows, n) for n in plan["n_values"]}, "timing": timing}
    summary["timing"]["total_s"] = time.perf_counter() - start
    (out / "fidelity.json").write_text(json.dumps(summary, indent=2))
    print((out / "results.md").read_text().split("\n\n**Prompt:**")[0])
    for n, c in summary["claim"].items():
        print(
            f"N={n}: vBoN-l1 win rate = {c['vbon_l1_win_share_of_bon']:.0%} of BoN's "
            f"(Pareto: {c['vbon_l1_on_pareto_front']}); vBoN-exact {c['vbon_exact_win_share_of_bon']:.0%} "
            f"({c['vbon_exact_on_pareto_front']}); BoN-SFT {c['bon_sft_win_share_of_bon']:.0%} "
            f"({c['bon_sft_on_pareto_front']})"
        )
    print(f"total {summary['timing']['total_s'] / 60:.1f} min; wrote {out}")


if __name__ == "__main__":
    main()
