"""One workflow, a list of stages: reference sampling -> training -> evaluation -> serving.

The stage contract: a `Stage` has a name, a folder under RUN_DIR/NAME/, the stages it needs, a
key (the hash of everything its output depends on, upstream keys included) and `run`. Each
stage's manifest (`vbon.manifest`) holds its key; a rerun skips every stage whose key is
unchanged and whose output is complete; `from_stage` forces a stage and those after it. A
failing stage leaves the finished ones intact and is named. `vbon sample / train / evaluate` run
the workflow restricted to their stage and what it needs, so they reuse what `vbon run` made.
The outcome of each stage is written to RUN_DIR/NAME/run.json. A `run_dir` URI (s3://, file://)
is mirrored stage by stage from a local staging folder (`vbon.run_store`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vbon.config import WorkflowConfig
from vbon.errors import VbonError
from vbon.manifest import begin, config_hash, finish, is_complete, read_manifest, write_json_atomic
from vbon.run_store import is_uri, pull, push, staging_dir


@dataclass(frozen=True)
class Stage:
    """`key(cfg, run_dir)` and `run(cfg, run_dir) -> info` (info lands in run.json). A stage
    that is not `durable` (serving: a live endpoint, not files) is up to date only while its
    endpoint runs in this Ray cluster, and is never mirrored to a URI."""

    name: str
    folder: str
    needs: tuple[str, ...]
    key: Callable[[WorkflowConfig, Path], str]
    run: Callable[[WorkflowConfig, Path], dict]
    durable: bool = True


def local_run_dir(cfg: WorkflowConfig) -> Path:
    """Where the stages' files are on this machine (the staging folder for a URI run_dir)."""
    return (
        staging_dir(cfg.run_dir, cfg.name) if is_uri(cfg.run_dir) else Path(cfg.run_dir) / cfg.name
    )


def trained_policies(cfg: WorkflowConfig, run_dir: Path) -> dict[str, Path]:
    """The workflow's trained policy under its method label."""
    return {cfg.method_label: run_dir / "train" / "model"}


def _sampling_key(cfg: WorkflowConfig, run_dir: Path) -> str:
    from vbon.sampling.stage import sampling_hash

    return sampling_hash(cfg)


def _training_key(cfg: WorkflowConfig, run_dir: Path) -> str:
    from vbon.training.stage import training_hash

    return training_hash(cfg)


def _evaluation_key(cfg: WorkflowConfig, run_dir: Path) -> str:
    from vbon.evaluation.stage import evaluation_hash

    train = _training_key(cfg, run_dir)
    policies = trained_policies(cfg, run_dir)
    return evaluation_hash(cfg, policies, dict.fromkeys(policies, train))


def _serving_key(cfg: WorkflowConfig, run_dir: Path) -> str:
    model = _training_key(cfg, run_dir)
    return config_hash({"model": model, "serving": cfg.serving, "reward": cfg.reward})


def _run_sampling(cfg: WorkflowConfig, run_dir: Path) -> dict:
    from vbon.sampling.stage import run_sampling

    run_sampling(cfg, run_dir / "samples")
    return {}


def _run_training(cfg: WorkflowConfig, run_dir: Path) -> dict:
    from vbon.training.stage import run_training

    run_training(cfg, run_dir / "samples", run_dir / "train")
    return {}


def _run_evaluation(cfg: WorkflowConfig, run_dir: Path) -> dict:
    from vbon.evaluation.stage import run_evaluation

    run_evaluation(cfg, run_dir / "samples", trained_policies(cfg, run_dir), run_dir / "eval")
    return {}


def _run_serving(cfg: WorkflowConfig, run_dir: Path) -> dict:
    from vbon.serving.launch import serve_model

    folder = run_dir / "serve"
    manifest = begin(folder, "serving", _serving_key(cfg, run_dir))
    info = serve_model(cfg, run_dir / "train" / "model")
    finish(folder, manifest, **info)
    return info


STAGES: tuple[Stage, ...] = (
    Stage("sampling", "samples", (), _sampling_key, _run_sampling),
    Stage("training", "train", ("sampling",), _training_key, _run_training),
    Stage("evaluation", "eval", ("sampling", "training"), _evaluation_key, _run_evaluation),
    Stage("serving", "serve", ("training",), _serving_key, _run_serving, durable=False),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stages_for(target: str | None, serve: bool = True) -> list[Stage]:
    """The stages to consider: `target` and what it needs (all but serving without `serve`)."""
    if target is None:
        return [s for s in STAGES if serve or s.durable]
    by_name = {s.name: s for s in STAGES}
    wanted = {target} | set(by_name[target].needs)
    return [s for s in STAGES if s.name in wanted]


def _endpoint_up() -> bool:
    from ray import serve

    from vbon.serving.app import APP_NAME

    try:
        return APP_NAME in serve.status().applications
    except Exception:  # no Serve instance in this cluster
        return False


def _up_to_date(stage: Stage, run_dir: Path, key: str) -> bool:
    return is_complete(run_dir / stage.folder, key) and (stage.durable or _endpoint_up())


def _stop_serving() -> None:
    """Free the endpoint's CPUs/GPUs before training or evaluation reruns (a running replica
    would hold resources that Ray Train's workers wait for)."""
    from ray import serve

    from vbon.serving.app import APP_NAME

    if _endpoint_up():
        serve.delete(APP_NAME)


def run_workflow(
    cfg: WorkflowConfig,
    from_stage: str | None = None,
    serve: bool = True,
    log: Callable[[str], None] = print,
    target: str | None = None,
    connect: Callable[[], object] = lambda: None,
) -> dict:
    """Run (or skip) each stage on Ray; returns run.json's content. `target` restricts the run
    to that stage and the stages it needs. `connect` is called once, before the first stage that
    has to run: a caller can start Ray there, so a run whose stages are all up to date needs no
    cluster. The serving stage's up-to-date check asks Serve, so a run that serves starts Ray
    before calling this."""
    remote = is_uri(cfg.run_dir)
    run_dir = local_run_dir(cfg)
    if remote:
        pull(cfg.run_dir, cfg.name, [s.folder for s in STAGES if s.durable])
        log(f"run folder {cfg.run_dir}/{cfg.name}, staged in {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = stages_for(target, serve)
    keys = {s.name: s.key(cfg, run_dir) for s in stages}
    forced = set(STAGE_NAMES[STAGE_NAMES.index(from_stage) :]) if from_stage else set()
    todo = [s for s in stages if s.name in forced or not _up_to_date(s, run_dir, keys[s.name])]
    if todo:
        connect()
    if any(s.durable for s in todo):
        _stop_serving()
    record: dict = {"workflow": cfg.name, "stages": {}}
    for i, stage in enumerate(stages, 1):
        folder = run_dir / stage.folder
        tag = f"[{i}/{len(stages)}] {stage.name}"
        if stage not in todo:
            log(f"{tag}: up to date, skipped ({folder})")
            record["stages"][stage.name] = {"status": "skipped", "output": str(folder)}
            continue
        previous = read_manifest(folder)
        stale = previous is not None and previous["config_hash"] != keys[stage.name]
        if stage.durable and (stage.name in forced or stale):
            shutil.rmtree(folder, ignore_errors=True)  # derived output of an older config
        # an unchanged but unfinished stage resumes from what it left
        log(f"{tag}: running" + (" (config changed)" if stale else ""))
        start = time.perf_counter()
        try:
            info = stage.run(cfg, run_dir)
        except VbonError as exc:
            record["stages"][stage.name] = {"status": "failed", "error": str(exc)}
            _save_record(cfg, run_dir, record)
            raise VbonError(
                f"stage {stage.name} failed: {exc} (finished stages are kept in {run_dir})"
            ) from None
        if remote and stage.durable:
            push(cfg.run_dir, cfg.name, run_dir, stage.folder)
        seconds = time.perf_counter() - start
        record["stages"][stage.name] = {
            "status": "ran",
            "seconds": seconds,
            "output": str(folder),
            **info,
        }
        log(f"{tag}: done in {seconds:.0f} s")
    _save_record(cfg, run_dir, record)
    return record


def _save_record(cfg: WorkflowConfig, run_dir: Path, record: dict) -> None:
    write_json_atomic(run_dir / "run.json", record)
    if is_uri(cfg.run_dir):
        push(cfg.run_dir, cfg.name, run_dir, "run.json")
