"""Pictures of results: training curves and the reward-versus-KL Pareto front (PNG, matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CURVES = [
    ("reward", "mean raw reward"),
    ("score", "mean training score"),
    ("kl", "KL to reference"),
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
    """One panel per metric against the training step."""
    steps = read_steps(metrics_jsonl)
    shown = [(k, label) for k, label in CURVES if steps and k in steps[0]]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], shown, strict=True):
        ax.plot([s["step"] for s in steps], [s[key] for s in steps], marker=".")
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
