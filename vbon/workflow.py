"""One workflow, four stages in order: reference sampling -> training -> evaluation -> serving.

Each stage writes under RUN_DIR/NAME/ with a manifest holding the hash of the config it depends
on. A rerun skips every stage whose hash is unchanged and whose output is complete; `from_stage`
forces a stage and those after it. A failing stage leaves the finished ones intact and is named.
The outcome of each stage is written to RUN_DIR/NAME/run.json. A `run_dir` URI (s3://, file://)
is mirrored stage by stage from a local staging folder (`vbon.run_store`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from vbon.config import WorkflowConfig
from vbon.errors import VbonError
from vbon.manifest import config_hash, read_manifest, write_json_atomic
from vbon.run_store import is_uri, pull, push, staging_dir

STAGES = ("sampling", "training", "evaluation", "serving")
FOLDERS = {"sampling": "samples", "training": "train", "evaluation": "eval", "serving": "serve"}


def local_run_dir(cfg: WorkflowConfig) -> Path:
    """Where the stages' files are on this machine (the staging folder for a URI run_dir)."""
    return (
        staging_dir(cfg.run_dir, cfg.name) if is_uri(cfg.run_dir) else Path(cfg.run_dir) / cfg.name
    )


def method_label(cfg: WorkflowConfig) -> str:
    t = cfg.training
    if t.algorithm == "vbon":
        return f"vBoN ({t.vbon_reward})"
    if t.algorithm == "kl_rl":
        return f"KL-RL beta={t.beta:g}"
    return "BoN-SFT"


def stage_hashes(cfg: WorkflowConfig, run_dir: Path) -> dict[str, str]:
    from vbon.evaluation.stage import evaluation_hash
    from vbon.sampling.stage import sampling_hash
    from vbon.training.stage import training_hash

    train = training_hash(cfg)
    return {
        "sampling": sampling_hash(cfg),
        "training": train,
        "evaluation": evaluation_hash(
            cfg, {method_label(cfg): run_dir / "train" / "model"}, {method_label(cfg): train}
        ),
        "serving": config_hash({"model": train, "serving": cfg.serving, "reward": cfg.reward}),
    }


def _up_to_date(folder: Path, key: str) -> bool:
    manifest = read_manifest(folder)
    return (
        manifest is not None and manifest["config_hash"] == key and manifest["status"] == "complete"
    )


def _serving_up(folder: Path, key: str) -> bool:
    """The endpoint this config deployed is still running in this Ray cluster."""
    from ray import serve

    from vbon.serving.app import APP_NAME

    if not _up_to_date(folder, key):
        return False
    try:
        return APP_NAME in serve.status().applications
    except Exception:  # no Serve instance in this cluster
        return False


def _stop_serving() -> None:
    """Free the endpoint's CPUs/GPUs before training or evaluation reruns (a running replica
    would hold resources that Ray Train's workers wait for)."""
    from ray import serve

    from vbon.serving.app import APP_NAME

    try:
        if APP_NAME in serve.status().applications:
            serve.delete(APP_NAME)
    except Exception:  # no Serve instance in this cluster
        return


def run_workflow(
    cfg: WorkflowConfig,
    from_stage: str | None = None,
    serve: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or skip) each stage on the Ray the caller started; returns run.json's content."""
    remote = is_uri(cfg.run_dir)
    run_dir = local_run_dir(cfg)
    if remote:
        pull(cfg.run_dir, cfg.name, [FOLDERS[s] for s in STAGES[:-1]])
        log(f"run folder {cfg.run_dir}/{cfg.name}, staged in {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    keys = stage_hashes(cfg, run_dir)
    forced = set(STAGES[STAGES.index(from_stage) :]) if from_stage else set()
    stages = STAGES if serve else STAGES[:-1]
    todo = [
        stage
        for stage in stages
        if stage in forced
        or not (_serving_up if stage == "serving" else _up_to_date)(
            run_dir / FOLDERS[stage], keys[stage]
        )
    ]
    if any(stage != "serving" for stage in todo):
        _stop_serving()
    record: dict = {"workflow": cfg.name, "stages": {}}
    for i, stage in enumerate(stages, 1):
        folder = run_dir / FOLDERS[stage]
        if stage not in todo:
            log(f"[{i}/{len(stages)}] {stage}: up to date, skipped ({folder})")
            record["stages"][stage] = {"status": "skipped", "output": str(folder)}
            continue
        previous = read_manifest(folder)
        stale = previous is not None and previous["config_hash"] != keys[stage]
        if stage != "serving" and (stage in forced or stale):
            shutil.rmtree(folder, ignore_errors=True)  # derived output of an older config
        # an unchanged but unfinished stage resumes from what it left
        log(f"[{i}/{len(stages)}] {stage}: running" + (" (config changed)" if stale else ""))
        start = time.perf_counter()
        try:
            info = _RUNNERS[stage](cfg, run_dir, folder, keys[stage])
        except VbonError as exc:
            record["stages"][stage] = {"status": "failed", "error": str(exc)}
            write_json_atomic(run_dir / "run.json", record)
            if remote:
                push(cfg.run_dir, cfg.name, run_dir, "run.json")
            raise VbonError(
                f"stage {stage} failed: {exc} (finished stages are kept in {run_dir})"
            ) from None
        if remote and stage != "serving":
            push(cfg.run_dir, cfg.name, run_dir, FOLDERS[stage])
        seconds = time.perf_counter() - start
        record["stages"][stage] = {
            "status": "ran",
            "seconds": seconds,
            "output": str(folder),
            **info,
        }
        log(f"[{i}/{len(stages)}] {stage}: done in {seconds:.0f} s")
    write_json_atomic(run_dir / "run.json", record)
    if remote:
        push(cfg.run_dir, cfg.name, run_dir, "run.json")
    return record


def _sampling(cfg: WorkflowConfig, run_dir: Path, folder: Path, key: str) -> dict:
    from vbon.sampling.stage import run_sampling

    run_sampling(cfg, folder)
    return {}


def _training(cfg: WorkflowConfig, run_dir: Path, folder: Path, key: str) -> dict:
    from vbon.training.stage import run_training

    run_training(cfg, run_dir / "samples", folder)
    return {}


def _evaluation(cfg: WorkflowConfig, run_dir: Path, folder: Path, key: str) -> dict:
    from vbon.evaluation.stage import run_evaluation

    policies = {method_label(cfg): run_dir / "train" / "model"}
    run_evaluation(cfg, run_dir / "samples", policies, folder)
    return {}


def _serving(cfg: WorkflowConfig, run_dir: Path, folder: Path, key: str) -> dict:
    from vbon.serving.launch import serve_model

    info = serve_model(cfg, run_dir / "train" / "model")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        folder / "manifest.json",
        {"stage": "serving", "config_hash": key, "status": "complete", **info},
    )
    return info


_RUNNERS = {
    "sampling": _sampling,
    "training": _training,
    "evaluation": _evaluation,
    "serving": _serving,
}
