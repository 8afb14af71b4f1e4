"""The evaluation stage driver: one Ray actor per trained policy samples the held-out prompts;
the reference and BoN at every N come from the cached samples without new generation.

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

from vbon.config import WorkflowConfig
from vbon.core.metrics import best_of_first_n
from vbon.errors import DataError, VbonError
from vbon.evaluation.metrics import bon_row, policy_row, reference_row
from vbon.evaluation.policy_eval import PolicyEvaluator
from vbon.evaluation.report import mark_pareto, markdown_table
from vbon.manifest import claim_folder, config_hash, read_manifest, write_json_atomic
from vbon.plots import pareto_plot
from vbon.sampling.stage import read_samples, sampling_hash

_Evaluator = ray.remote(PolicyEvaluator)


def _policy_identity(path: Path) -> str:
    """The training manifest's hash when the policy came from `vbon train`, else file stamps."""
    manifest = read_manifest(path.parent)
    if manifest is not None and path.name == "model":
        return manifest["config_hash"]
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


def _sample_policies(
    cfg: WorkflowConfig, policies: dict[str, Path], prompts: list[tuple[int, str]], progress: bool
) -> dict[str, list[dict]]:
    """Every policy's rows, its chunks of prompts queued on its own actor; actors beyond the
    cluster's capacity start as earlier ones finish."""
    res, e = cfg.resources, cfg.evaluation
    chunk = max(1, e.batch_size // e.samples_per_prompt)
    opts = {"num_cpus": res.cpus_per_actor, "num_gpus": res.gpus_per_actor}
    actors = {n: _Evaluator.options(**opts).remote(cfg, str(p)) for n, p in policies.items()}
    pending = {
        actors[name].run.remote(prompts[i : i + chunk], e.samples_per_prompt): name
        for name in policies
        for i in range(0, len(prompts), chunk)
    }
    left = {name: sum(1 for n in pending.values() if n == name) for name in policies}
    results: dict[str, list[dict]] = {name: [] for name in policies}
    bar = tqdm(
        total=len(prompts) * len(policies), unit="prompt", desc="evaluating", disable=not progress
    )
    try:
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ref)
            try:
                rows = ray.get(ref)
            except ray.exceptions.RayError as exc:
                cause = getattr(exc, "cause", None)
                reason = (
                    str(cause)
                    if isinstance(cause, VbonError)
                    else str(exc).strip().splitlines()[-1]
                )
                raise VbonError(f"evaluating {name!r}: {reason}") from None
            results[name] += rows
            bar.update(len(rows))
            left[name] -= 1
            if not left[name]:  # free its CPUs for the policies still waiting for an actor
                ray.kill(actors[name])
    finally:
        bar.close()
        for actor in actors.values():
            ray.kill(actor)
    return {name: sorted(rows, key=lambda r: r["prompt_id"]) for name, rows in results.items()}


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
    out.mkdir(parents=True, exist_ok=True)
    test = _test_rows(cfg, samples)
    ref_rewards = torch.tensor([r["rewards"] for r in test], dtype=torch.float64)
    prompts = [(r["prompt_id"], r["prompt"]) for r in test]
    sampled = _sample_policies(cfg, policies, prompts, progress) if policies else {}

    b = cfg.evaluation.bootstrap
    rows = [reference_row(ref_rewards, cfg.n, b)]
    rows += [bon_row(n, ref_rewards, b) for n in sorted(set(cfg.evaluation.n_values) - {1})]
    bon = best_of_first_n(ref_rewards, cfg.n)
    for name, prow in sampled.items():
        t = {
            k: torch.tensor([r[k] for r in prow], dtype=torch.float64)
            for k in ("rewards", "kl_k1", "kl_k3")
        }
        rows.append(policy_row(name, t["rewards"], t["kl_k1"], t["kl_k3"], ref_rewards, bon, b))

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
    write_json_atomic(
        out / "manifest.json",
        {
            "stage": "evaluation",
            "config_hash": key,
            "status": "complete",
            "policies": {k: str(v) for k, v in policies.items()},
        },
    )
    return out
