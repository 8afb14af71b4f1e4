"""The evaluation results as Markdown: one row per method, every number with its interval."""

from __future__ import annotations

import math

from vbon.core.metrics import pareto_front

COLUMNS = [
    ("reward", "mean reward"),
    ("win_rate", "win rate vs ref (M samples)"),
    ("win_rate_first", "win rate vs ref (1st sample)"),
    ("win_rate_vs_bon", "win rate vs BoN"),
    ("kl", "KL k1"),
    ("kl_k3", "KL k3"),
]


def mark_pareto(rows: list[dict]) -> None:
    """Add `pareto_win_rate` / `pareto_reward`: whether the row is on that front against KL."""
    for metric in ("win_rate", "reward"):
        valid = [r for r in rows if not math.isnan(r[metric]["mean"])]
        flags = pareto_front([r["kl"]["mean"] for r in valid], [r[metric]["mean"] for r in valid])
        for r in rows:
            r[f"pareto_{metric}"] = False
        for r, on in zip(valid, flags, strict=True):
            r[f"pareto_{metric}"] = on


def _cell(m: dict) -> str:
    if math.isnan(m["mean"]):
        return "—"
    if m["se"] == 0:
        return f"{m['mean']:.3f}"
    lo, hi = m["ci"]
    ci = "" if math.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]"
    return f"{m['mean']:.3f} ± {m['se']:.3f}{ci}"


def markdown_table(results: dict) -> str:
    head = ["method", *[label for _, label in COLUMNS], "Pareto (win/KL)"]
    lines = [
        f"# Evaluation: {results['workflow']}",
        "",
        f"{results['num_prompts']} held-out prompts; N = {results['n']}, M = {results['m']}; "
        f"{results['samples_per_prompt']} samples per prompt for each trained policy. "
        "Cells: mean ± standard error [95% bootstrap interval over prompts]; ties count half.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in results["rows"]:
        cells = [
            r["method"],
            *[_cell(r[k]) for k, _ in COLUMNS],
            "yes" if r.get("pareto_win_rate") else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "KL: " + "; ".join(sorted({f"{r['kind']}: {r['kl_method']}" for r in results["rows"]})),
        "",
    ]
    for ex in results["examples"]:
        lines += [f"**Prompt:** {ex['prompt']}", ""]
        for name, c in ex["completions"].items():
            text = c["text"].replace("\n", " ")
            lines.append(f"- *{name}* ({c['reward']:+.3f}): {text}")
        lines.append("")
    return "\n".join(lines)


def summary(results: dict, policy: str) -> str:
    """Before (the reference), after (the trained policy) and BoN at the workflow's N."""
    rows = {r["method"]: r for r in results["rows"]}
    picks = [("reference", "before training"), (policy, "after training")]
    picks.append((f"BoN N={results['n']}", f"{results['n']} samples per answer"))
    lines = [f"{'':<28} {'mean reward':<18} {'win rate vs ref':<18} KL to ref"]
    for name, note in picks:
        if name in rows:
            r = rows[name]
            lines.append(
                f"{name + ' (' + note + ')':<28} {_cell(r['reward']).split(' [')[0]:<18} "
                f"{_cell(r['win_rate']).split(' [')[0]:<18} {r['kl']['mean']:.3f}"
            )
    return "\n".join(lines)
