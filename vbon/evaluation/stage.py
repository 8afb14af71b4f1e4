"""The evaluation stage driver: the trained policies sample the held-out prompts on the actor pool
(`vbon.actor_pool`, one group per policy); the reference and BoN at every N come from the cached
samples without new generation. Each policy is also measured against BoN at the N it was
trained for: the share of BoN's gain it recovers, its gap to the BoN curve, and what it cost
(sampling and training seconds against the seconds per served request with 1 and N samples: the
break-even).

Output folder:
    manifest.json         config hash (samples, evaluation settings, each policy's identity)
    results.json          one row per method: every metric as {mean, se, ci}, plus examples
    results.md            the same as a Markdown table
    pareto_win_rate.png   win rate against the reference vs KL, Pareto front marked
    pareto_reward.png     mean reward vs KL
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ray
import torch
from tqdm import tqdm

from vbon.actor_pool import ActorPool
from vbon.config import WorkflowConfig
from vbon.core.metrics import break_even_requests
from vbon.errors import DataError, VbonError
from vbon.evaluation.metrics import bon_row, closeness_to_bon, policy_row, reference_row
from vbon.evaluation.policy_eval import PolicyEvaluator
from vbon.evaluation.report import mark_pareto, markdown_table
from vbon.manifest import (
    MODEL_IDENTITY,
    begin,
    claim_folder,
    config_hash,
    finish,
    read_manifest,
    write_json_atomic,
)
from vbon.plots import pareto_plot
from vbon.sampling.stage import read_samples, sampling_hash

_Evaluator = ray.remote(PolicyEvaluator)
ESTIMATES = 3  # the metrics' definitions: a change recomputes cached evaluations


def _policy_identity(path: Path) -> str:
    """The training config's hash when the policy came from `vbon train`, else file stamps."""
    made_by = read_manifest(path, MODEL_IDENTITY)
    if made_by is not None:
        return made_by["training_hash"]
    stamps = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.glob("*"))
    return hashlib.sha256(json.dumps([str(path), stamps]).encode()).hexdigest()


def evaluation_hash(
    cfg: WorkflowConfig, policies: dict[str, Path], identities: dict[str, str] | None = None
) -> str:
    """What the results depend on; `identities` gives policies' hashes known in advance (a
    workflow knows the training hash before the model exists)."""
    ids = {k: (identities or {}).get(k) or _policy_identity(Path(v)) for k, v in policies.items()}
    return config_hash(
        {
            "estimates": ESTIMATES,
            "samples": sampling_hash(cfg),
            "n": cfg.n,
            "evaluation": cfg.evaluation,
            "policies": json.dumps(ids, sort_keys=True),
        }
    )


def _test_rows(cfg: WorkflowConfig, samples: Path) -> list[dict]:
    rows = read_samples(samples, "test").to_pylist()
    if len(rows) < 2:
        raise DataError(
            f"{samples} has {len(rows)} held-out prompts; evaluation needs at least 2 "
            "(raise data.test_fraction or data.max_prompts)"
        )
    return rows[: cfg.evaluation.max_prompts]


def target_n(cfg: WorkflowConfig, policy: Path) -> int:
    """The N a policy was trained to match (recorded by `vbon train`), else the workflow's."""
    return (read_manifest(policy, MODEL_IDENTITY) or {}).get("n", cfg.n)


def _sample_policies(
    cfg: WorkflowConfig,
    policies: dict[str, Path],
    targets: dict[str, int],
    prompts: list[tuple[int, str]],
    progress: bool,
) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Every policy's rows, from chunks of prompts on the actor pool (one group per policy), and
    per policy the measured seconds of one served request with 1 and with its target N samples."""
    res, e = cfg.resources, cfg.evaluation
    chunk = max(1, e.batch_size // e.samples_per_prompt)
    opts = {"num_cpus": res.cpus_per_actor, "num_gpus": res.gpus_per_actor}
    pool = ActorPool(
        lambda group, name: _Evaluator.options(name=name, **opts).remote(cfg, str(policies[group])),
        res.sampling_actors,
        "evaluator",
    )
    tasks = [
        (name, (prompts[i : i + chunk], e.samples_per_prompt, targets[name] if i == 0 else 0))
        for name in policies
        for i in range(0, len(prompts), chunk)
    ]
    results: dict[str, list[dict]] = {name: [] for name in policies}
    timing: dict[str, dict] = {}
    bar = tqdm(
        total=len(prompts) * len(policies), unit="prompt", desc="evaluating", disable=not progress
    )

    def on_done(i: int, out: tuple[list[dict], dict | None]) -> None:
        name, (rows, seconds) = tasks[i][0], out
        results[name] += rows
        if seconds:
            timing[name] = seconds
        bar.update(len(rows))

    try:
        pool.run(tasks, on_done, lambda i: f"evaluating {tasks[i][0]!r}")
    finally:
        bar.close()
    rows = {name: sorted(r, key=lambda r: r["prompt_id"]) for name, r in results.items()}
    return rows, timing


def _cost(samples: Path, policy: Path, seconds: dict, n: int) -> dict:
    """What it took to make the policy (reference sampling and training seconds, from their
    manifests) against what BoN costs per served request, and the break-even point."""
    sampled = (read_manifest(samples) or {}).get("timing", {})
    trained = read_manifest(policy, MODEL_IDENTITY) or {}  # written by `vbon train`
    one_time = sampled.get("sampling_s", float("nan")) + trained.get("wall_s", float("nan"))
    return {
        "sampling_s": sampled.get("sampling_s", float("nan")),
        "training_s": trained.get("wall_s", float("nan")),
        "request_s_one_sample": seconds["one"],
        f"request_s_bon_n{n}": seconds["bon"],
        "bon_n": n,
        "break_even_requests": break_even_requests(one_time, seconds["one"], seconds["bon"]),
    }


def _examples(cfg: WorkflowConfig, test: list[dict], sampled: dict[str, list[dict]]) -> list[dict]:
    """The first few held-out prompts with one completion from each method."""
    out = []
    for i, row in enumerate(test[: cfg.evaluation.num_examples]):
        best = int(torch.tensor(row["rewards"][: cfg.n]).argmax())
        methods = {
            "reference": (row["completions"][0], row["rewards"][0]),
            f"BoN N={cfg.n}": (row["completions"][best], row["rewards"][best]),
        }
        for name, rows in sampled.items():
            methods[name] = (rows[i]["completions"][0], rows[i]["rewards"][0])
        out.append(
            {
                "prompt": row["prompt"],
                "completions": {k: {"text": t, "reward": r} for k, (t, r) in methods.items()},
            }
        )
    return out


def run_evaluation(
    cfg: WorkflowConfig, samples: Path, policies: dict[str, Path], out: Path, progress: bool = True
) -> Path:
    """Evaluate the reference, BoN at `evaluation.n_values` and each policy into `out`."""
    out = Path(out)
    for name, path in policies.items():
        if not (Path(path) / "config.json").is_file():
            raise VbonError(f"policy {name!r}: {path} is not a model folder (no config.json)")
    key = evaluation_hash(cfg, policies)
    manifest = claim_folder(out, key, "evaluation")
    if manifest and manifest.get("status") == "complete":
        return out
    manifest = begin(out, "evaluation", key)
    test = _test_rows(cfg, samples)
    ref_rewards = torch.tensor([r["rewards"] for r in test], dtype=torch.float64)
    prompts = [(r["prompt_id"], r["prompt"]) for r in test]
    targets = {name: target_n(cfg, Path(path)) for name, path in policies.items()}
    sampled, timing = (
        _sample_policies(cfg, policies, targets, prompts, progress) if policies else ({}, {})
    )

    b = cfg.evaluation.bootstrap
    rows = [reference_row(ref_rewards, cfg.n, b)]
    bon_ns = set(cfg.evaluation.n_values) | set(targets.values())
    rows += [bon_row(n, ref_rewards, b) for n in sorted(bon_ns - {1})]
    for name, prow in sampled.items():
        n = targets[name]
        t = {
            k: torch.tensor([r[k] for r in prow], dtype=torch.float64)
            for k in ("rewards", "kl_k1", "kl_k3")
        }
        row = policy_row(name, t["rewards"], t["kl_k1"], t["kl_k3"], ref_rewards, n, b)
        row |= closeness_to_bon(row, [r for r in rows if r["kind"] == "bon"], n) | {"bon_n": n}
        if name in timing:
            row["cost"] = _cost(samples, policies[name], timing[name], n)
        rows.append(row)

    mark_pareto(rows)
    results = {
        "workflow": cfg.name,
        "n": cfg.n,
        "m": cfg.m,
        "num_prompts": len(test),
        "samples_per_prompt": cfg.evaluation.samples_per_prompt,
        "rows": rows,
        "examples": _examples(cfg, test, sampled),
    }
    write_json_atomic(out / "results.json", results)
    (out / "results.md").write_text(markdown_table(results))
    title = f"{cfg.name}: {len(test)} held-out prompts, N={cfg.n}"
    pareto_plot(
        rows, "win_rate", "win rate against the reference", out / "pareto_win_rate.png", title
    )
    pareto_plot(rows, "reward", "mean reward", out / "pareto_reward.png", title)
    finish(out, manifest, policies={k: str(v) for k, v in policies.items()})
    return out
