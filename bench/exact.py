"""Exact comparison of vBoN and its baselines in the enumerable toy world (V=4, L=5).

For each N, every method is trained with Monte Carlo gradients and then scored exactly:
KL(pi || pi_BoN), KL(pi || pi_ref) and the win rate against the reference. KL-regularised RL on
the raw reward gets the beta that puts its optimum at the same KL from the reference as vBoN-exact.
The ratio printed per method is its KL to pi_BoN over the reference's (lower is better).

    python bench/exact.py [--ns 2 4 8 16] [--levels 13] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from vbon.core.bon import bon_probs, win_rate_vs_ref
from vbon.methods import get_method
from vbon.toy.train import ToyRun, optimum, train_toy
from vbon.toy.world import all_sequences, distinct_reward, kl, leveled_reward, random_reference

V, L = 4, 5


def tune_beta(ref, reward, n: int, target_kl: float) -> float:
    """Bisection in log beta so that KL(pi*_beta || pi_ref) = target_kl for raw-reward KL-RL."""
    lo, hi = math.log(1e-3), math.log(1e3)
    p = ref.probs()
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        opt = optimum(ref, reward, ToyRun("kl_rl", n, beta=math.exp(mid)))
        lo, hi = (mid, hi) if kl(opt, p) > target_kl else (lo, mid)
    return math.exp(0.5 * (lo + hi))


def run(ns: list[int], out: Path, levels: int | None = None) -> dict:
    ref = random_reference(V, L, seed=0)
    reward = distinct_reward(V, L, seed=1) if levels is None else leveled_reward(V, L, levels, 1)
    p, r = ref.probs(), reward(all_sequences(V, L))
    rows = []
    for n in ns:
        bon = bon_probs(p, r, n)
        policies = {"reference": p, "BoN": bon}
        start = time.perf_counter()
        for spec in [
            ToyRun("vbon_exact", n),
            ToyRun("vbon_exact", n, m=300),
            ToyRun("vbon", n, m=300),
            ToyRun("bon_sft", n, lr=0.05),
            ToyRun("bon_distill", n, lr=0.05),
        ]:
            name = get_method(spec.method).label + (f" (F_hat, M={spec.m})" if spec.m else "")
            policies[name] = train_toy(ref, reward, spec).probs()
        beta = tune_beta(ref, reward, n, kl(policies["vBoN (exact)"], p))
        policies[f"KL-RL (beta={beta:.3g})"] = train_toy(
            ref, reward, ToyRun("kl_rl", n, beta=beta)
        ).probs()
        ref_gap = kl(p, bon)
        for name, q in policies.items():
            row = {
                "n": n,
                "method": name,
                "kl_to_bon": kl(q, bon),
                "kl_to_ref": kl(q, p),
                "win_rate": float(win_rate_vs_ref(q, p, r)),
                "kl_to_bon_ratio_vs_reference": kl(q, bon) / ref_gap,
            }
            rows.append(row)
            print(
                f"N={n:<3} {name:<28} KL(pi||BoN)={row['kl_to_bon']:.4f}  "
                f"ratio={row['kl_to_bon_ratio_vs_reference']:.4f}  KL(pi||ref)={row['kl_to_ref']:.3f}  "
                f"win={row['win_rate']:.4f}"
            )
        print(f"N={n}: trained {len(policies) - 2} policies in {time.perf_counter() - start:.1f}s")
    out.mkdir(parents=True, exist_ok=True)
    result = {"world": {"vocab": V, "length": L, "reward_levels": levels}, "rows": rows}
    (out / "exact.json").write_text(json.dumps(result, indent=2))
    plot(rows, ns, out / "exact.png")
    print(f"wrote {out / 'exact.json'} and {out / 'exact.png'}")
    return result


def _base(method: str) -> str:
    """The method's name without its tuned beta."""
    return method.split(" (beta")[0]


def plot(rows: list[dict], ns: list[int], path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    bon = [row for row in rows if row["method"] == "BoN"]
    ax1.plot(
        [b["kl_to_ref"] for b in bon], [b["win_rate"] for b in bon], "k-o", label="BoN (exact)"
    )
    styles = [
        ("vBoN-exact", "s"),
        ("vBoN-exact (F_hat, M=300)", "v"),
        ("vBoN-l1", "^"),
        ("BoN-SFT", "D"),
        ("KL-RL", "x"),
    ]
    for label, marker in styles:
        pts = [row for row in rows if _base(row["method"]) == label]
        ax1.scatter(
            [q["kl_to_ref"] for q in pts], [q["win_rate"] for q in pts], marker=marker, label=label
        )
    ax1.set(
        xlabel="KL(pi || pi_ref) [nats]",
        ylabel="win rate vs reference",
        title="Win rate vs KL (toy world)",
    )
    ax1.legend(fontsize=8)
    names = list(dict.fromkeys(_base(row["method"]) for row in rows if row["method"] != "BoN"))
    width = 0.8 / len(ns)
    for i, n in enumerate(ns):
        vals = {_base(row["method"]): row["kl_to_bon"] for row in rows if row["n"] == n}
        ax2.bar(
            [j + i * width for j in range(len(names))],
            [vals[m] for m in names],
            width,
            label=f"N={n}",
        )
    ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=20, fontsize=8)
    ax2.set(
        yscale="log", ylabel="KL(pi || pi_BoN) [nats]", title="Distance to the BoN distribution"
    )
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--levels", type=int, help="cut the reward into this many tied levels (default: distinct)"
    )
    args = parser.parse_args()
    run(args.ns, args.out, args.levels)
