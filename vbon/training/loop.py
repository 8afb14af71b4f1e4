"""The Ray Train worker loop: every worker holds a DeepSpeed engine, rolls out its shard of the
step's prompts, and updates; rank 0 logs, and every rank reports checkpoints to Ray Train."""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vbon.config import TrainingConfig
from vbon.core.metrics import mean_and_stderr_from_sums
from vbon.training.task import HELDOUT_SUMS, Task

EXPORT_DIR = "model"


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs; `make_task` runs on the worker (models load there)."""

    training: TrainingConfig
    beta: float
    make_task: Callable[[], Task]
    log_dir: str
    dtype: str = "float32"  # model.dtype, resolved on each worker's device
    cpus_per_worker: float = 1.0


def step_prompts(num_prompts: int, per_step: int, step: int, seed: int) -> list[int]:
    """The step's global prompt indices: consecutive slices of one fresh permutation per epoch."""
    chosen: list[int] = []
    pos = step * per_step
    while len(chosen) < per_step:
        epoch, offset = divmod(pos, num_prompts)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        take = torch.randperm(num_prompts, generator=g)[offset : offset + per_step - len(chosen)]
        chosen += take.tolist()
        pos += len(take)
    return chosen


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Log:
    """Rank 0's metrics: one JSON line per event and TensorBoard scalars (the driver prints them:
    `vbon.training.stage.follow_metrics`)."""

    def __init__(self, log_dir: str, rank: int) -> None:
        self.active = rank == 0
        self.path = Path(log_dir) / "metrics.jsonl"
        self.tb = None
        if self.active:
            from torch.utils.tensorboard import SummaryWriter

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tb = SummaryWriter(str(Path(log_dir) / "tensorboard"))

    def event(self, record: dict) -> None:
        if self.active:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def step(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        self.event({"step": step, **metrics})
        for k, v in metrics.items():
            self.tb.add_scalar(f"train/{k}", v, step)
        self.tb.flush()


def _reduce(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean over workers (sums for token counts, the largest worker's memory)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return metrics
    keys = sorted(metrics)
    vec = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    peak = vec.clone()
    dist.all_reduce(vec)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    world = dist.get_world_size()
    out = {}
    for i, k in enumerate(keys):
        out[k] = float(peak[i]) if k.endswith("_mib") else float(vec[i])
        if not k.endswith("_mib") and k not in ("tokens", "tokens_per_s"):
            out[k] /= world
    return out


def _save(engine, step: int, metrics: dict, export: Callable[[Path], None] | None) -> None:
    """A DeepSpeed checkpoint (each rank its shards), plus the exported model on rank 0 when
    `export` is given, reported to Ray Train, which merges the ranks' folders."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag="ds", client_state={"step": step})
        if export is not None:
            export(Path(tmp) / EXPORT_DIR)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _restore(engine) -> int:
    """The step to start from: that of Ray Train's latest checkpoint, or 0."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as folder:
        _, client = engine.load_checkpoint(folder, tag="ds")
    return int(client["step"])


def train_loop(config: dict) -> None:
    """Ray Train entry point (`train_loop_config = {"job": TrainJob}`)."""
    job: TrainJob = config["job"]
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import ray.train
    import ray.train.torch

    from vbon.core.bon import bon_pick_probs
    from vbon.core.vbon_reward import n_from_beta
    from vbon.methods import get_method
    from vbon.models.loading import resolve_dtype
    from vbon.training import engine as ds
    from vbon.training import memory, timing
    from vbon.training.update import cached_step, pair_step, rl_step

    ds.skip_inference_kernels()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(job.cpus_per_worker)))
    t = job.training
    log = _Log(job.log_dir, rank)
    Path(job.log_dir, "pids").mkdir(parents=True, exist_ok=True)
    Path(job.log_dir, "pids", f"rank-{rank}").write_text(str(os.getpid()))

    task = job.make_task()
    task.setup(device)
    method = get_method(t.algorithm)
    per_worker = t.prompts_per_step // world
    bf16 = resolve_dtype(job.dtype, device) == torch.bfloat16
    ds_config = ds.deepspeed_config(t, per_worker * t.samples_per_prompt, bf16)
    with ds.zero3_init(ds_config):
        task.load_reference(ds.frozen_placement(ds_config))
        policy = task.build_policy(value_head=method.uses_rollouts and t.estimator == "ppo")
    engine = ds.initialize(policy, t, ds_config)

    def generating():  # the whole policy on each rank while it generates (ZeRO-3)
        return ds.whole_policy_for_generation(engine, t.gather_for_generation)

    start = _restore(engine)
    if start:
        log.event({"event": "resume", "step": start, "optimizer_steps": ds.optimizer_steps(engine)})
    elif t.eval_every:  # the learning curve starts at the reference
        with generating() as synced:
            log.step(0, _heldout(task, engine.module, rank, world, synced, device))
    for step in range(start, t.steps):
        began = time.perf_counter()
        prompts = step_prompts(task.num_prompts, t.prompts_per_step, step, t.seed)[rank::world]
        seed = (t.seed * 1_000_003 + step) * 1_009 + rank
        k = t.samples_per_prompt
        if step < t.distill_steps:  # warm start: BoN distillation on the cached samples
            metrics = cached_step(engine, task, task.cached(prompts, bon_pick_probs, k, seed), t)
        elif step < t.distill_steps + t.reference_steps:  # the RL objective on cached samples
            batch = task.reference_rollout(prompts, k, seed, method)
            metrics = rl_step(engine, task, batch, t, job.beta)
        elif method.pairwise:  # beta = 1/(N-1) gives the groups' N
            n = round(n_from_beta(job.beta))
            batch = task.reference_rollout(prompts, k, seed, method, pairs_of=n)
            metrics = pair_step(engine, task, batch, t, job.beta)
        elif not method.uses_rollouts:
            batch = task.cached(prompts, method.cached_weights, k, seed)
            metrics = cached_step(engine, task, batch, t)
        else:
            with generating() as synced:
                batch = task.rollout(engine.module, prompts, k, seed, synced, method)
            cached = (
                task.cached(prompts, method.cached_weights, k, seed) if method.uses_cached else None
            )
            metrics = rl_step(engine, task, batch, t, job.beta, cached)
        elapsed = time.perf_counter() - began
        metrics |= (
            timing.take()
            | {
                "step_s": elapsed,
                "tokens_per_s": metrics["tokens"] / elapsed,
                "lr": engine.get_lr()[0],
                "peak_mem_mib": peak_memory_mib(device),
            }
            | memory.model_states(engine, getattr(task, "reference", None))
        )
        metrics = _reduce(metrics, device)
        if t.eval_every and ((step + 1) % t.eval_every == 0 or step + 1 == t.steps):
            with generating() as synced:
                metrics |= _heldout(task, engine.module, rank, world, synced, device)
        log.step(step + 1, metrics)
        last = step + 1 == t.steps
        if last or (step + 1) % t.checkpoint_every == 0:
            _save(engine, step + 1, metrics, _exporter(engine, task, rank) if last else None)


def _heldout(task: Task, policy, rank: int, world: int, synced: bool, device) -> dict:
    """The learning curve's point: win rates against the reference on the held-out prompts of
    every rank together (`heldout_win_rate`, its standard error over prompts
    `heldout_win_rate_se` when there are several, and `heldout_bon_win_rate`)."""
    import torch.distributed as dist

    policy.eval()
    part = task.heldout_win_rate(policy, rank, world, synced)
    policy.train()
    vec = torch.tensor([part[k] for k in HELDOUT_SUMS], dtype=torch.float64)
    if dist.is_initialized() and world > 1:
        vec = vec.to(device)
        dist.all_reduce(vec)
    count, won, won_sq, bon = vec.tolist()
    if not count:
        return {}
    mean, se = mean_and_stderr_from_sums(count, won, won_sq)
    point = {"heldout_win_rate": mean, "heldout_bon_win_rate": bon / count}
    return point | ({"heldout_win_rate_se": se} if count > 1 else {})


def _exporter(engine, task: Task, rank: int) -> Callable[[Path], None] | None:
    """Rank 0's export of the full trained policy (gathered from all ranks under ZeRO-3)."""
    from vbon.training.engine import full_state_dict

    state = full_state_dict(engine)
    if rank != 0:
        return None

    def export(folder: Path) -> None:
        policy = engine.module
        if engine.zero_optimization_stage() == 3:
            policy = task.build_policy(value_head=False)
            policy.load_state_dict({k: v for k, v in state.items() if "value_head" not in k})
        task.export(policy, folder)

    return export
