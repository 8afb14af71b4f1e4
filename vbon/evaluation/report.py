"""The evaluation results as Markdown and as a console summary: one row per method, every number
with its interval, how close each trained policy comes to BoN, and what it cost."""

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
    ("gain_recovered", "gain recovered G"),
    ("gap_to_bon_curve", "gap to BoN curve"),
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


def _cell(m: dict | None, interval: bool = True) -> str:
    if m is None or math.isnan(m["mean"]):
        return "—"
    if m["se"] == 0:
        return f"{m['mean']:.3f}"
    lo, hi = m["ci"]
    ci = "" if math.isnan(lo) or not interval else f" [{lo:.3f}, {hi:.3f}]"
    return f"{m['mean']:.3f} ± {m['se']:.3f}{ci}"


def cost_lines(results: dict) -> list[str]:
    """One line per trained policy: one-time seconds, seconds per request, break-even."""
    lines = []
    for r in results["rows"]:
        c = r.get("cost")
        if c:
            n = c["bon_n"]
            lines.append(
                f"- {r['method']}: reference sampling {c['sampling_s']:.0f} s + training "
                f"{c['training_s']:.0f} s; a served request takes {c['request_s_one_sample']:.2f} s "
                f"with one sample and {c[f'request_s_bon_n{n}']:.2f} s as BoN N={n}; break-even "
                f"after {c['break_even_requests']:,.0f} requests"
            )
    return lines


def markdown_table(results: dict) -> str:
    head = ["method", *[label for _, label in COLUMNS], "Pareto (win/KL)"]
    lines = [
        f"# Evaluation: {results['workflow']}",
        "",
        f"{results['num_prompts']} held-out prompts; N = {results['n']}, M = {results['m']}; "
        f"{results['samples_per_prompt']} samples per prompt for each trained policy. "
        "Cells: mean ± standard error [95% bootstrap interval over prompts]; ties count half. "
        "G = (WR - 0.5) / (WR_BoN(N) - 0.5) and the win rate vs BoN take each policy's own N, "
        f"the one it was trained for (the workflow's N = {results['n']} for the reference); the "
        "gap is BoN's win rate at the policy's KL (along the measured BoN points) minus the "
        "policy's.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in results["rows"]:
        cells = [
            r["method"],
            *[_cell(r.get(k)) for k, _ in COLUMNS],
            "yes" if r.get("pareto_win_rate") else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "KL: " + "; ".join(sorted({f"{r['kind']}: {r['kl_method']}" for r in results["rows"]})),
        "",
    ]
    if cost_lines(results):
        lines += ["## Cost", "", *cost_lines(results), ""]
    for ex in results["examples"]:
        lines += [f"**Prompt:** {ex['prompt']}", ""]
        for name, c in ex["completions"].items():
            text = c["text"].replace("\n", " ")
            lines.append(f"- *{name}* ({c['reward']:+.3f}): {text}")
        lines.append("")
    return "\n".join(lines)


def summary(results: dict) -> str:
    """The console table: the reference (before), each trained policy (after) with how close it
    comes to BoN, and BoN at the workflow's N and at each policy's own; then the cost lines."""
    rows = results["rows"]
    policies = [r for r in rows if r["kind"] == "policy"]
    targets = {results["n"]} | {r["bon_n"] for r in policies}
    picks = [r for r in rows if r["kind"] == "reference"] + policies
    picks += [r for r in rows if r["kind"] == "bon" and r["n"] in targets]
    width = max(len(r["method"]) for r in picks) + 2
    lines = [
        f"{'':<{width}}{'mean reward':<18}{'win rate vs ref':<18}{'KL to ref':<11}"
        f"{'G (gain of BoN)':<18}gap to BoN curve"
    ]
    for r in picks:
        lines.append(
            f"{r['method']:<{width}}{_cell(r['reward'], False):<18}"
            f"{_cell(r['win_rate'], False):<18}{r['kl']['mean']:<11.3f}"
            f"{_cell(r.get('gain_recovered'), False):<18}{_cell(r.get('gap_to_bon_curve'), False)}"
        )
    return "\n".join([*lines, *cost_lines(results)])
