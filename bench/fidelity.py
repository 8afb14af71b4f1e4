"""Fidelity to BoN on real text: of the fine-tuning methods, does vBoN come closest to BoN?

One command, on `workflows/fidelity.yaml` (SmolLM2-135M-Instruct, VADER reward, movie-review
openings, M reference samples per prompt): sample once; for each N train vBoN (l1 and exact
rewards), BoN-SFT and BoN distillation, plus KL-regularised RL on the raw reward at several beta
(beta does not depend on N), all with the same trainer and the same number of policy updates;
evaluate every policy and BoN at every N on the held-out prompts. Writes bench/results/fidelity/
(results.json, results.md, the Pareto PNGs) and fidelity.json with, per N and method, the share
of BoN-N's gain recovered (G), the gap to the BoN curve, Pareto membership, and a verdict.

    python bench/fidelity.py            # about an hour on 2 CPU cores
    python bench/fidelity.py --scale    # paper size, for a GPU cluster (resources from the file)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vbon.config import WorkflowConfig, load_workflow, parse_workflow
from vbon.core.metrics import gain_recovered, interpolate_curve
from vbon.evaluation.report import summary as summarize
from vbon.evaluation.stage import run_evaluation
from vbon.manifest import read_manifest
from vbon.methods import METHODS, get_method
from vbon.ray_runtime import ray_session
from vbon.sampling.stage import run_sampling
from vbon.training.stage import run_training

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"n_values": [2, 4, 8], "betas": [0.05, 0.2], "per_n": ("vbon", "bon_sft", "bon_distill")}
SCALE = {
    "n_values": [2, 4, 8, 16, 32],
    "betas": [0.01, 0.03, 0.1, 0.3, 1.0],
    "overrides": {
        "m": 128,
        "data": {"max_prompts": 2000, "test_fraction": 0.1},
        "sampling": {"max_new_tokens": 40, "shard_size": 512},
        "training": {"steps": 300, "prompts_per_step": 64, "trainable": "all", "estimator": "ppo",
                     "samples_per_prompt": 1, "update_epochs": 4, "learning_rate": 1.41e-5,
                     "prefix_baseline": False, "reference_steps": 0},
        "evaluation": {"n_values": [1, 2, 4, 8, 16, 32, 64, 128], "samples_per_prompt": 8},
        "resources": {"sampling_actors": 8, "gpus_per_actor": 1, "train_workers": 8,
                      "gpus_per_worker": 1},
    },
    "per_n": ("vbon", "vbon_exact", "bon_sft", "bon_distill"),
}  # fmt: skip


def variant(base: WorkflowConfig, **changes) -> WorkflowConfig:
    """The base workflow with some sections (or top-level keys) changed, validated again."""
    raw = base.model_dump(mode="json")
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return parse_workflow(raw, "fidelity variant")


def methods(base: WorkflowConfig, n_values: list[int], betas: list[float], per_n) -> dict:
    """Label -> workflow, one per trained policy; labels come from the method registry. Every
    policy takes the same number of updates; the cached-sample methods (BoN-SFT, distillation)
    have no rollouts, so they drop the RL recipe's prefix baseline and reference steps."""
    out = {}
    for n in n_values:
        for name in per_n:
            changes = {"algorithm": name, "beta": None}
            if get_method(name).uses_cached:
                changes |= {"prefix_baseline": False, "reference_steps": 0}
            cfg = variant(base, n=n, training=changes)
            out[f"{cfg.method_label} N={n}"] = cfg
    for beta in betas:
        cfg = variant(base, training={"algorithm": "kl_rl", "beta": beta})
        out[cfg.method_label] = cfg
    return out


def curve_at(rows: dict, prefix: str, kl: float) -> float:
    """The win rate of a method family's curve (the reference at KL 0, then its trained points by
    KL) at the given KL: how a method does at another method's KL (flat beyond its last point)."""
    points = sorted(
        [(0.0, 0.5)]
        + [(r["kl"]["mean"], r["win_rate"]["mean"]) for label, r in rows.items()
           if r["kind"] == "policy" and label.startswith(prefix)]
    )  # fmt: skip
    return interpolate_curve(kl, *map(list, zip(*points, strict=True)))


def claim(rows: dict, n: int) -> dict:
    """Per method trained for N: the share of BoN-N's gain it recovers (G, paired over prompts),
    its gap to the BoN curve, whether it is on the Pareto front. For vBoN also: KL-RL's and
    BoN-SFT's curves at vBoN's KL (matched KL), the break-even at the evaluated N, and the verdict
    of the issue's bar (G >= 0.9 and gap <= 0.02)."""
    bon = torch.tensor(rows[f"BoN N={n}"]["per_prompt_win_rate"])
    out = {}
    for label, r in rows.items():
        if r["kind"] != "policy" or not label.endswith(f" N={n}"):
            continue
        g, se = gain_recovered(torch.tensor(r["per_prompt_win_rate"]), bon)
        out[label] = {
            "win_rate": r["win_rate"]["mean"],
            "win_rate_se": r["win_rate"]["se"],
            "gain_recovered": g,
            "gain_recovered_se": se,
            "gap_to_bon_curve": r["gap_to_bon_curve"]["mean"],
            "kl": r["kl"]["mean"],
            "on_pareto_front": r["pareto_win_rate"],
        }
    label = f"{METHODS['vbon'].label} N={n}"
    vbon = out[label]
    for name in ("kl_rl", "bon_sft"):
        vbon[f"{name}_at_kl"] = curve_at(rows, METHODS[name].label, vbon["kl"])
    cost = rows[label].get("cost") or {}
    vbon["break_even_requests"] = cost.get("break_even_requests")
    vbon["break_even_bon_n"] = cost.get("bon_n")
    out["verdict"] = (
        "met"
        if vbon["gain_recovered"] >= 0.9 and vbon["gap_to_bon_curve"] <= 0.02
        else f"not met: G = {vbon['gain_recovered']:.2f}, gap = {vbon['gap_to_bon_curve']:.3f}"
    )
    return out


def recorded(folder: Path, elapsed: float) -> float:
    """A stage's seconds when it ran: from its manifest if this run found it cached (the cold
    cost of the bench), else the time it just took."""
    manifest = read_manifest(folder) or {}
    seconds = manifest.get("timing", {}).get("sampling_s") or manifest.get("wall_s")
    return float(seconds) if seconds and seconds > elapsed else elapsed


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
    timing, start = {}, time.perf_counter()
    with ray_session(base.resources, verbose=False, log_dir=run):
        samples = run_sampling(base, run / "samples")
        timing["sampling_s"] = recorded(samples, time.perf_counter() - start)
        policies = {}
        for label, cfg in methods(base, plan["n_values"], plan["betas"], plan["per_n"]).items():
            began = time.perf_counter()
            folder = run / "train" / label.replace(" ", "_").replace("=", "")
            policies[label] = run_training(cfg, samples, folder) / "model"
            timing[f"train {label}_s"] = recorded(folder, time.perf_counter() - began)
            print(f"trained {label} in {timing[f'train {label}_s']:.0f} s", flush=True)
        began = time.perf_counter()
        judged = variant(base, n=max(plan["n_values"]))  # each policy is judged at its own N
        out = run_evaluation(judged, samples, policies, args.out)
        timing["evaluation_s"] = time.perf_counter() - began
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    summary = {"claim": {n: claim(rows, n) for n in plan["n_values"]}, "timing": timing}
    summary["timing"]["total_s"] = sum(timing.values())  # cold: cached stages at their first cost
    summary["timing"]["this_run_s"] = time.perf_counter() - start
    (out / "fidelity.json").write_text(json.dumps(summary, indent=2))
    print(summarize(results))
    for n, c in summary["claim"].items():
        shown = "; ".join(
            f"{label}: G {v['gain_recovered']:.2f}, gap {v['gap_to_bon_curve']:+.3f}"
            for label, v in c.items()
            if label != "verdict"
        )
        v = c[f"{METHODS['vbon'].label} N={n}"]
        print(
            f"N={n}: {shown}; at vBoN's KL {v['kl']:.3f}: vBoN {v['win_rate']:.3f}, KL-RL "
            f"{v['kl_rl_at_kl']:.3f}, BoN-SFT {v['bon_sft_at_kl']:.3f}; vBoN bar (G >= 0.9, "
            f"gap <= 0.02): {c['verdict']}"
        )
    t = summary["timing"]
    print(
        f"total {t['total_s'] / 60:.1f} min cold ({t['this_run_s'] / 60:.1f} min this run); wrote {out}"
    )


if __name__ == "__main__":
    main()
