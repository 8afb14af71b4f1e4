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

import re
import shutil
import signal
import threading
import time
from functools import partial
from pathlib import Path

from vbon.config import ResourcesConfig, WorkflowConfig
from vbon.errors import VbonError
from vbon.manifest import claim_folder, config_hash, write_json_atomic
from vbon.plots import read_steps, training_curves
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


def _failure_line(exc: BaseException) -> str:
    """The worker's own error line (a VbonError's message) rather than Ray's wrapping."""
    text = str(exc)
    found = re.findall(r"vbon\.errors\.\w+: (.+)", text)
    if found:
        return found[-1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def fit(job: TrainJob, resources: ResourcesConfig, storage: Path) -> Path:
    """Run `train_loop` on `resources.train_workers` workers; the final checkpoint's folder.

    A rerun with the same `storage` continues from the latest checkpoint (Ray Train resumes a
    run by its name and storage path); a failed worker restarts the group from it.
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
            failure_config=ray.train.FailureConfig(max_failures=job.training.max_failures),
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
    )
    sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    except SystemExit:  # Ray Train's Ctrl-C handler aborts the run, then exits
        raise KeyboardInterrupt from None
    except Exception as exc:  # Ray wraps worker errors in its own types
        raise VbonError(f"training failed: {_failure_line(exc)}") from None
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
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "stage": "training",
        "config_hash": key,
        "config": cfg.model_dump(mode="json"),
        "samples": str(samples),
        "status": "running",
    }
    write_json_atomic(out / "manifest.json", manifest)
    job = TrainJob(
        training=cfg.training,
        beta=cfg.beta,
        make_task=partial(LanguageModelTask, cfg, str(Path(samples).resolve())),
        log_dir=str(out),
        bf16=cfg.model.dtype == "bfloat16",
        cpus_per_worker=cfg.resources.cpus_per_worker,
    )
    start = time.perf_counter()
    final = fit(job, cfg.resources, out)
    shutil.rmtree(out / EXPORT_DIR, ignore_errors=True)
    shutil.copytree(final / EXPORT_DIR, out / EXPORT_DIR)
    steps = read_steps(out / "metrics.jsonl")
    training_curves(out / "metrics.jsonl", out / "training.png", title=f"{cfg.name}: training")
    manifest |= {
        "status": "complete",
        "final_metrics": steps[-1],
        "wall_s": time.perf_counter() - start,
    }
    write_json_atomic(out / "manifest.json", manifest)
    return out
