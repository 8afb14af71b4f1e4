"""The `vbon` command. User mistakes print one line and exit 2; only real bugs show a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from vbon.config import WorkflowConfig, load_workflow, parse_workflow
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
    cfg = load_workflow(args.workflow or DEFAULT_WORKFLOW)
    if getattr(args, "run_dir", None):
        cfg = cfg.model_copy(update={"run_dir": args.run_dir})
    return cfg


def _stage(args: argparse.Namespace, target: str) -> tuple[WorkflowConfig, Path]:
    """Run the workflow up to `target` (that stage and what it needs, reusing what is done).
    Ray starts only if a stage has to run."""
    from vbon.ray_runtime import ray_session
    from vbon.workflow import local_run_dir, run_workflow

    cfg = _load(args)
    session = ray_session(cfg.resources, args.verbose, local_run_dir(cfg))
    with ExitStack() as stack:
        run_workflow(cfg, serve=False, target=target, connect=lambda: stack.enter_context(session))
    return cfg, local_run_dir(cfg)


def _sample(args: argparse.Namespace) -> int:
    _, run_dir = _stage(args, "sampling")
    print(f"samples: {run_dir / 'samples'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from vbon.manifest import read_manifest

    cfg, run_dir = _stage(args, "training")
    out = run_dir / "train"
    final = read_manifest(out)["final_metrics"]
    shown = ", ".join(f"{k} {final[k]:.4g}" for k in ("reward", "kl", "loss") if k in final)
    print(f"trained ({cfg.method_label}, {cfg.training.steps} steps): {shown}")
    print(
        f"model: {out / 'model'}  curves: {out / 'training.png'}  tensorboard: {out / 'tensorboard'}"
    )
    return 0


def _policies(specs: list[str]) -> dict[str, Path]:
    """NAME=DIR pairs from --policy."""
    policies = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise VbonError(
                f"--policy {spec!r}: expected NAME=MODEL_DIR, e.g. vbon=runs/x/train/model"
            )
        policies[name] = Path(path)
    return policies


def _show_results(out: Path) -> None:
    """The summary and one example from results.json."""
    from vbon.evaluation.report import summary

    results = json.loads((out / "results.json").read_text())
    print(f"\nheld-out prompts: {results['num_prompts']}\n{summary(results)}")
    for ex in results["examples"][:1]:
        print(f"\nexample prompt: {ex['prompt']}")
        for name, c in ex["completions"].items():
            print(f"  {name} ({c['reward']:+.3f}): {c['text'].strip()}")
    print(
        f"\nresults: {out / 'results.json'}  plots: {out / 'pareto_win_rate.png'}, "
        f"{out / 'pareto_reward.png'}"
    )


def _evaluate(args: argparse.Namespace) -> int:
    """The workflow's evaluation stage; with --policy, those model folders instead (into
    --out, default RUN_DIR/NAME/eval-policies)."""
    if not args.policy:
        _, run_dir = _stage(args, "evaluation")
        _show_results(run_dir / "eval")
        return 0
    from vbon.evaluation.stage import run_evaluation
    from vbon.ray_runtime import ray_session
    from vbon.workflow import local_run_dir, run_workflow

    cfg = _load(args)
    policies = _policies(args.policy)
    run_dir = local_run_dir(cfg)
    out = args.out or run_dir / "eval-policies"
    with ray_session(cfg.resources, args.verbose, run_dir):
        run_workflow(cfg, serve=False, target="sampling")
        run_evaluation(cfg, run_dir / "samples", policies, out)
    _show_results(out)
    return 0


def _serve_until_interrupted(drain_s: float) -> int:
    """Block while the endpoint serves. SIGTERM or Ctrl-C: stop taking requests, let those in
    flight finish (at most `drain_s` seconds), shut Serve down and exit 0 (Ray itself is shut
    down by the caller's `ray_session`)."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the drain
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nstopping the endpoint: finishing the requests in flight", flush=True)
        from vbon.serving.launch import drain_and_shutdown

        left = drain_and_shutdown(drain_s)
        print(f"stopped ({left} requests still in flight were cut)" if left else "stopped")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Serve MODEL_DIR, or without it the workflow's serving stage (training first if needed)."""
    from vbon.ray_runtime import ray_session
    from vbon.serving.launch import serve_model
    from vbon.workflow import local_run_dir, run_workflow

    if args.model_dir is None:
        cfg = load_workflow(args.workflow or DEFAULT_WORKFLOW)
    else:
        cfg = load_workflow(args.workflow) if args.workflow else WorkflowConfig()
    overrides = {
        k: v for k, v in (("host", args.host), ("port", args.port), ("bon_n", args.bon)) if v
    }
    raw = cfg.model_dump(mode="json")
    cfg = parse_workflow({**raw, "serving": {**raw["serving"], **overrides}}, "command line")
    with ray_session(cfg.resources, args.verbose, local_run_dir(cfg)):
        if args.model_dir is None:
            record = run_workflow(cfg, target="serving")
            info = record["stages"]["serving"]
            if info["status"] == "skipped":  # up already in this cluster: read its manifest
                info = json.loads((local_run_dir(cfg) / "serve" / "manifest.json").read_text())
        else:
            info = serve_model(cfg, args.model_dir, args.name)
        mode = f"BoN N={cfg.serving.bon_n}" if cfg.serving.bon_n else "one sample per request"
        print(f"serving {info['model']} ({mode}) at {info['url']}/v1  (Ctrl-C stops)")
        print(info["example"], flush=True)
        return _serve_until_interrupted(cfg.serving.drain_s)


def _run(args: argparse.Namespace) -> int:
    """Every stage of the workflow in order, skipping those whose inputs are unchanged."""
    from vbon.ray_runtime import ray_session
    from vbon.workflow import local_run_dir, run_workflow

    cfg = _load(args)
    run_dir = local_run_dir(cfg)
    print(
        f"workflow {cfg.name}: N={cfg.n}, M={cfg.m}, model={cfg.model.name_or_path}, "
        f"method={cfg.method_label}, run folder {run_dir}"
    )
    serving = cfg.serving.enabled and not args.no_serve
    with ray_session(cfg.resources, args.verbose, run_dir):
        run_workflow(cfg, args.from_stage, serve=serving)
        _show_results(run_dir / "eval")
        if not serving:
            return 0
        info = json.loads((run_dir / "serve" / "manifest.json").read_text())
        print(
            f"\nserving the trained model at {info['url']}/v1 (Ctrl-C stops); try:\n{info['example']}",
            flush=True,
        )
        if args.no_block:
            return 0
        return _serve_until_interrupted(cfg.serving.drain_s)


def _submit(args: argparse.Namespace) -> int:
    import asyncio

    from vbon import jobs

    job_id = jobs.submit(args.workflow, args.address, args.from_stage)
    print(f"submitted {job_id} to {args.address}")
    print(
        f"follow with: vbon status {job_id} --address {args.address}; vbon logs {job_id} --address {args.address}"
    )
    if not args.wait:
        return 0
    asyncio.run(jobs.follow(job_id, args.address))
    final = jobs.status(job_id, args.address)
    print(f"job {job_id}: {final}")
    return 0 if final == "SUCCEEDED" else 1


def _status(args: argparse.Namespace) -> int:
    from vbon import jobs

    print(jobs.status(args.job_id, args.address))
    return 0


def _logs(args: argparse.Namespace) -> int:
    import asyncio

    from vbon import jobs

    if args.follow:
        asyncio.run(jobs.follow(args.job_id, args.address))
    else:
        print(jobs.logs(args.job_id, args.address), end="")
    return 0


def _workflow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow", type=Path, nargs="?", help="default: workflows/quickstart.yaml")
    p.add_argument("--run-dir", help="override the workflow's run_dir (a folder or a URI)")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="show Ray's own logs (else in RUN_DIR/NAME)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vbon",
        description="Variational Best-of-N alignment on Ray: sample, train, evaluate, serve.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a workflow file against the typed config")
    p.add_argument("workflow", type=Path)
    p.set_defaults(func=_validate)
    p = sub.add_parser("sample", help="draw and score M reference samples per prompt on Ray actors")
    _workflow_args(p)
    p.set_defaults(func=_sample)
    p = sub.add_parser("train", help="fine-tune the policy (sampling first, if not done yet)")
    _workflow_args(p)
    p.set_defaults(func=_train)
    p = sub.add_parser("evaluate", help="reward, win rates and KL of BoN and trained policies")
    _workflow_args(p)
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a model folder to evaluate instead of the workflow's trained policy (repeatable)",
    )
    p.add_argument(
        "--out", type=Path, help="with --policy: output folder (default RUN_DIR/NAME/eval-policies)"
    )
    p.set_defaults(func=_evaluate)
    p = sub.add_parser("serve", help="an autoscaled OpenAI-compatible endpoint on Ray Serve")
    p.add_argument(
        "model_dir",
        nargs="?",
        metavar="MODEL",
        help="a model folder, hub name or builtin: name; omitted: the workflow's trained policy "
        "(its stages run as needed)",
    )
    p.add_argument("--workflow", type=Path, help="workflow whose serving/reward sections apply")
    p.add_argument("--bon", type=int, metavar="N", help="serve Best-of-N over MODEL instead")
    p.add_argument("--host", help="bind address (default serving.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default serving.port)")
    p.add_argument("--name", help="model name clients send (default: the workflow name)")
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs")
    p.set_defaults(func=_serve)
    p = sub.add_parser("submit", help="send a workflow to a Ray cluster as a Ray job")
    p.add_argument("workflow", type=Path)
    p.add_argument("--address", required=True, help="the cluster's dashboard, http://HEAD:8265")
    p.add_argument("--from", dest="from_stage", choices=["sampling", "training", "evaluation"])
    p.add_argument("--wait", action="store_true", help="follow the logs until the job ends")
    p.set_defaults(func=_submit)
    for name, func, text in (
        ("status", _status, "a submitted job's status"),
        ("logs", _logs, "a submitted job's logs"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")
        p.add_argument("--address", required=True, help="the cluster's dashboard, http://HEAD:8265")
        if name == "logs":
            p.add_argument("--follow", action="store_true")
        p.set_defaults(func=func)
    p = sub.add_parser("run", help="run a workflow's stages (default: workflows/quickstart.yaml)")
    _workflow_args(p)
    p.add_argument(
        "--from",
        dest="from_stage",
        choices=["sampling", "training", "evaluation", "serving"],
        help="rerun this stage and every later one even if up to date",
    )
    p.add_argument("--no-serve", action="store_true", help="stop after evaluation")
    p.add_argument(
        "--no-block", action="store_true", help="return once the endpoint is up (scripts)"
    )
    p.set_defaults(func=_run)
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
