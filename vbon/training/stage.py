"""The training stage driver: a Ray Train `TorchTrainer` over the workers of `resources`, with
checkpoints, automatic resume of an interrupted run, and recovery of failed workers.

Output folder:
    manifest.json       config, hash, status, final metrics and timing
    ray-train/          Ray Train storage (checkpoints: DeepSpeed shards of every rank)
    metrics.jsonl       one line per step (and per resume), from rank 0
    tensorboard/        the same scalars for TensorBoard
    training.png        the training curves
    model/              the trained policy: safetensors and tokenizer, for `from_pretrained`
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from vbon.config import ResourcesConfig, WorkflowConfig
from vbon.errors import VbonError
from vbon.manifest import (
    MODEL_IDENTITY,
    begin,
    claim_folder,
    config_hash,
    finish,
    write_json_atomic,
)
from vbon.plots import read_steps, training_curves
from vbon.ray_runtime import error_line
from vbon.sampling.stage import sampling_hash
from vbon.training.lm_task import LanguageModelTask
from vbon.training.loop import EXPORT_DIR, TrainJob, train_loop


def training_hash(cfg: WorkflowConfig) -> str:
    """What the trained model depends on: the samples, N, the training config and world size."""
    return config_hash(
        {
            "samples": sampling_hash(cfg),
            "n": cfg.n,
            "training": cfg.training,
            "train_workers": cfg.resources.train_workers,
        }
    )


SHOWN = ("reward", "score", "kl", "ess", "loss", "heldout_win_rate", "step_s")


@contextmanager
def follow_metrics(metrics: Path, total: int, every_s: float = 0.5) -> Iterator[None]:
    """While training runs, print each step that rank 0 appends to metrics.jsonl, once."""
    stop = threading.Event()
    offset = metrics.stat().st_size if metrics.exists() else 0

    def show() -> None:
        nonlocal offset
        while True:
            done = stop.wait(every_s)
            if metrics.exists():
                with metrics.open() as f:
                    f.seek(offset)
                    text = f.read()
                complete = text[: text.rfind("\n") + 1]
                offset += len(complete.encode())
                for line in complete.splitlines():
                    record = json.loads(line)
                    if "step" in record and "event" not in record:
                        shown = " ".join(f"{k}={record[k]:.4g}" for k in SHOWN if k in record)
                        print(f"[train] step {record['step']}/{total} {shown}", flush=True)
                    elif record.get("event") == "resume":
                        print(f"[train] resumed from step {record['step']}", flush=True)
            if done:
                return

    thread = threading.Thread(target=show, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _lost_nodes(storage: Path) -> str:
    """The nodes of this Ray cluster that died, and how to go on; '' when none did."""
    import ray

    dead = [n for n in ray.nodes() if not n["Alive"]]
    if not dead:
        return ""
    names = ", ".join(f"{n['NodeID'][:12]} ({n['NodeManagerAddress']})" for n in dead)
    return (
        f"; lost node(s): {names}. Give the cluster room for the Train workers again and rerun "
        f"the same command: it resumes from the last checkpoint in {Path(storage).resolve()}"
    )


def fit(job: TrainJob, resources: ResourcesConfig, storage: Path) -> Path:
    """Run `train_loop` on `resources.train_workers` workers; the final checkpoint's folder.

    A rerun with the same `storage` continues from the latest checkpoint (Ray Train resumes a
    run by its name and storage path); a failed worker (its process or its node) restarts the
    group from it, up to `training.max_failures` times, and so does a group that cannot start
    again (no room left on the cluster) within Ray Train's start timeout. Past that the run
    fails with one line naming the nodes that died and how to resume.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"job": job},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.train_workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name="ray-train",
            storage_path=str(Path(storage).resolve()),
            failure_config=ray.train.FailureConfig(
                max_failures=job.training.max_failures,
                controller_failure_limit=job.training.max_failures,  # restarts with no room
            ),
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
    )
    sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    except SystemExit:  # Ray Train's Ctrl-C handler aborts the run, then exits
        raise KeyboardInterrupt from None
    except Exception as exc:  # Ray wraps worker errors in its own types
        raise VbonError(f"training failed: {error_line(exc)}{_lost_nodes(storage)}") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)  # Ray Train's handler outlives the run
    if result.checkpoint is None:
        raise VbonError("training finished without a checkpoint; see the Ray Train logs")
    return Path(result.checkpoint.path)


def run_training(cfg: WorkflowConfig, samples: Path, out: Path) -> Path:
    """Train the policy on the samples' training prompts into `out` (skipped when complete)."""
    out = Path(out).resolve()
    key = training_hash(cfg)
    manifest = claim_folder(out, key, "training")
    if manifest and manifest["status"] == "complete" and (out / EXPORT_DIR).is_dir():
        return out
    manifest = begin(out, "training", key, config=cfg.model_dump(mode="json"), samples=str(samples))
    job = TrainJob(
        training=cfg.training,
        beta=cfg.beta,
        make_task=partial(LanguageModelTask, cfg, str(Path(samples).resolve())),
        log_dir=str(out),
        dtype=cfg.model.dtype,
        cpus_per_worker=cfg.resources.cpus_per_worker,
    )
    start = time.perf_counter()
    with follow_metrics(out / "metrics.jsonl", cfg.training.steps):
        final = fit(job, cfg.resources, out)
    shutil.rmtree(out / EXPORT_DIR, ignore_errors=True)
    shutil.copytree(final / EXPORT_DIR, out / EXPORT_DIR)
    wall_s = time.perf_counter() - start
    identity = {"training_hash": key, "wall_s": wall_s, "n": cfg.n}
    write_json_atomic(out / EXPORT_DIR / MODEL_IDENTITY, identity)
    steps = read_steps(out / "metrics.jsonl")
    training_curves(out / "metrics.jsonl", out / "training.png", title=f"{cfg.name}: training")
    finish(out, manifest, final_metrics=steps[-1], wall_s=wall_s)
    return out
