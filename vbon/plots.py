"""Pictures of results: training curves, the reward-versus-KL Pareto front and benchmark breakdowns
(PNG, matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CURVES = [
    ("reward", "mean raw reward"),
    ("score", "mean training score"),
    ("kl", "KL to reference"),
    ("ess", "importance ESS / k (reference steps)"),
    ("loss", "loss"),
]


def read_steps(metrics_jsonl: Path) -> list[dict]:
    """Per-step records, the last one kept where a restart redid a step."""
    by_step: dict[int, dict] = {}
    for line in Path(metrics_jsonl).read_text().splitlines():
        record = json.loads(line)
        if "event" not in record:
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def training_curves(metrics_jsonl: Path, png: Path, title: str = "") -> Path:
    """One panel per metric against the training step; with a held-out learning curve, a last
    panel with the policy's held-out win rate (a band of one standard error over prompts)
    climbing towards BoN's (the dashed target)."""
    steps = read_steps(metrics_jsonl)
    shown = [(k, label) for k, label in CURVES if any(k in s for s in steps)]
    heldout = [s for s in steps if "heldout_win_rate" in s]
    panels = len(shown) + bool(heldout)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], shown, strict=False):
        points = [s for s in steps if key in s]
        ax.plot([s["step"] for s in points], [s[key] for s in points], marker=".")
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    if heldout:
        ax = axes[0][-1]
        x, y = [s["step"] for s in heldout], [s["heldout_win_rate"] for s in heldout]
        line = ax.plot(x, y, "o-", label="policy")[0]
        if all("heldout_win_rate_se" in s for s in heldout):
            se = [s["heldout_win_rate_se"] for s in heldout]
            lo, hi = np.subtract(y, se), np.add(y, se)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, label="± 1 SE")
        ax.axhline(heldout[-1]["heldout_bon_win_rate"], color="0.4", ls="--", label="BoN (target)")
        ax.axhline(0.5, color="0.7", ls=":", label="reference")
        ax.set_xlabel("step")
        ax.set_title("held-out win rate vs reference")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


# by method family
MARKERS = {"vBoN": "o", "KL-RL": "D", "BoN-SFT": "v", "distill": "P", "BoNBoN": "X"}


def pareto_plot(rows: list[dict], metric: str, label: str, png: Path, title: str = "") -> Path:
    """`metric` against KL to the reference: the BoN curve across N, one point per other method
    with its standard errors, and the Pareto front (highest value at each KL) drawn through."""
    from vbon.core.metrics import pareto_front
    from vbon.methods import method_family

    rows = [r for r in rows if r[metric]["mean"] == r[metric]["mean"]]  # drop NaN
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    bon = sorted((r for r in rows if r["kind"] == "bon"), key=lambda r: r["kl"]["mean"])
    if bon:
        curve = [r for r in rows if r["kind"] == "reference"] + bon  # BoN at N = 1 is pi_ref
        ax.plot(
            [r["kl"]["mean"] for r in curve],
            [r[metric]["mean"] for r in curve],
            "-o",
            color="0.45",
            label="BoN: the target (N on the labels)",
            zorder=2,
        )
        for r in bon:
            ax.annotate(
                f"N={r['n']}",
                (r["kl"]["mean"], r[metric]["mean"]),
                fontsize=8,
                xytext=(4, -10),
                textcoords="offset points",
                color="0.35",
            )
    others = [r for r in rows if r["kind"] != "bon"]
    colors = plt.cm.tab20.colors if len(others) > 10 else plt.cm.tab10.colors
    for i, r in enumerate(others):
        ax.errorbar(
            r["kl"]["mean"],
            r[metric]["mean"],
            xerr=r["kl"]["se"],
            yerr=r[metric]["se"],
            fmt=MARKERS.get(method_family(r["method"]), "s"),
            color=colors[i % len(colors)],
            capsize=3,
            label=r["method"],
            zorder=3,
        )
        g = r.get("gain_recovered", {}).get("mean", float("nan"))
        if metric == "win_rate" and g == g:
            ax.annotate(
                f"G={g:.2f}",
                (r["kl"]["mean"], r[metric]["mean"]),
                fontsize=8,
                xytext=(5, 5),
                textcoords="offset points",
            )
    kls, values = [r["kl"]["mean"] for r in rows], [r[metric]["mean"] for r in rows]
    front = sorted(
        (k, v) for k, v, on in zip(kls, values, pareto_front(kls, values), strict=True) if on
    )
    ax.step(
        [k for k, _ in front],
        [v for _, v in front],
        where="post",
        color="tab:red",
        alpha=0.6,
        lw=1.5,
        ls="--",
        label="Pareto front",
        zorder=1,
    )
    ax.scatter(
        [k for k, _ in front],
        [v for _, v in front],
        s=160,
        facecolors="none",
        edgecolors="tab:red",
        zorder=4,
    )
    ax.set_xlabel("KL(pi || pi_ref)  (nats)")
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def stacked_bars(
    labels: list[str], parts: dict[str, list[float]], ylabel: str, title: str, png: Path
) -> Path:
    """One stacked bar per label, one segment per part in order (a benchmark's breakdown)."""
    fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(labels)), 4))
    bottom = [0.0] * len(labels)
    for name, heights in parts.items():
        ax.bar(labels, heights, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def log_ratio_scatter(h: np.ndarray, t: np.ndarray, slope: float, n: int, png: Path) -> Path:
    """A policy's log-ratio against BoN-n's on cached samples [P, M], each centred per prompt,
    with BoN's own line (slope 1) and the least-squares one (`bench/bon_alignment.py`)."""
    hc, tc = h - h.mean(-1, keepdims=True), t - t.mean(-1, keepdims=True)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(tc.ravel(), hc.ravel(), s=6, alpha=0.4, label="cached samples")
    ends = np.array([tc.min(), tc.max()])
    ax.plot(ends, ends, "k--", label=f"BoN-{n} (slope 1)")
    ax.plot(ends, slope * ends, "r-", label=f"least squares (slope {slope:.2f})")
    ax.set_xlabel("log pi_BoN / pi_ref, centred per prompt")
    ax.set_ylabel("log pi / pi_ref, centred per prompt")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
