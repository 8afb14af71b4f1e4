"""The `vbon` command. User mistakes print one line and exit 2; only real bugs show a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from vbon.config import WorkflowConfig, load_workflow
from vbon.errors import VbonError

DEFAULT_WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "quickstart.yaml"


def _validate(args: argparse.Namespace) -> int:
    cfg = load_workflow(args.workflow)
    print(
        f"{args.workflow}: ok (N={cfg.n}, M={cfg.m}, model={cfg.model.name_or_path}, "
        f"reward={cfg.reward.kind}, algorithm={cfg.training.algorithm}, beta={cfg.beta:.4g})"
    )
    return 0


def _load(args: argparse.Namespace) -> WorkflowConfig:
    return load_workflow(args.workflow or DEFAULT_WORKFLOW)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vbon",
        description="Variational Best-of-N alignment on Ray: sample, train, evaluate, serve.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a workflow file against the typed config")
    p.add_argument("workflow", type=Path)
    p.set_defaults(func=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except VbonError as exc:
        for line in str(exc).splitlines():
            print(f"vbon: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "vbon: interrupted; finished work is kept, rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
