"""The sampling stage driver: shards prompts over a pool of Ray actors, writes Parquet as shards
finish, survives dead actors and resumes interrupted runs.

Output folder:
    manifest.json             config, its hash, shard count, status
    data/part-00000.parquet   one row per prompt (see `Sampler.run`), one file per shard
"""

from __future__ import annotations

import os
import time
import uuid
from collections import deque
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.exceptions import RayActorError, RayTaskError
from tqdm import tqdm

from vbon.config import WorkflowConfig
from vbon.data.prompts import Prompt, load_prompts
from vbon.errors import VbonError
from vbon.manifest import claim_folder, config_hash, write_json_atomic
from vbon.models import load_tokenizer
from vbon.rewards import build_scorer
from vbon.sampling.actor import Sampler

SCHEMA = pa.schema(
    [
        ("prompt_id", pa.int64()),
        ("split", pa.string()),
        ("prompt", pa.string()),
        ("completions", pa.list_(pa.string())),
        ("rewards", pa.list_(pa.float64())),
        ("ref_logprobs", pa.list_(pa.float64())),
        ("sample_logprobs", pa.list_(pa.float64())),
        ("num_tokens", pa.list_(pa.int32())),
    ]
)
MAX_SHARD_ATTEMPTS = 3
_SamplerActor = ray.remote(Sampler)


def sampling_hash(cfg: WorkflowConfig) -> str:
    """What the samples depend on (not the actor count: results do not)."""
    return config_hash(
        {
            "model": cfg.model,
            "reward": cfg.reward,
            "data": cfg.data,
            "sampling": cfg.sampling,
            "m": cfg.m,
        }
    )


def plan_shards(prompts: list[Prompt], cfg: WorkflowConfig) -> list[list[Prompt]]:
    """Fixed consecutive chunks of about `sampling.batch_size` sequences (M per prompt)."""
    per_shard = max(1, cfg.sampling.batch_size // cfg.m)
    return [prompts[i : i + per_shard] for i in range(0, len(prompts), per_shard)]


def _part(out: Path, shard: int) -> Path:
    return out / "data" / f"part-{shard:05d}.parquet"


def _write_part(out: Path, shard: int, rows: list[dict]) -> None:
    path = _part(out, shard)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
    os.replace(tmp, path)


class _Pool:
    """Named sampling actors; a dead one is replaced by a fresh one."""

    def __init__(self, cfg: WorkflowConfig, size: int) -> None:
        res = cfg.resources
        self._options = {"num_cpus": res.cpus_per_actor, "num_gpus": res.gpus_per_actor}
        self._cfg, self._tag, self._count = cfg, uuid.uuid4().hex[:8], 0
        self.idle = deque(self._new() for _ in range(size))
        try:
            ray.get([a.pid.remote() for a in self.idle])  # every actor has loaded its model
        except RayActorError as exc:
            last = str(exc).strip().splitlines()[-1]
            raise VbonError(f"a sampling actor failed to start: {last}") from None

    def _new(self):
        self._count += 1
        name = f"vbon-sampler-{self._tag}-{self._count}"
        return _SamplerActor.options(name=name, **self._options).remote(self._cfg)

    def replace(self) -> None:
        self.idle.append(self._new())


def _preflight(cfg: WorkflowConfig) -> None:
    """Fail fast in the driver, with one line, on a model or reward that cannot load; this also
    builds a `builtin:` model once instead of in every actor."""
    load_tokenizer(cfg.model)
    build_scorer(cfg.reward)


def _run_shards(pool: _Pool, shards: list[list[Prompt]], todo: deque[int], on_done) -> None:
    """Keep every actor busy until all shards in `todo` are done; redo a dead actor's shard."""
    attempts: dict[int, int] = {}
    running: dict[ray.ObjectRef, tuple[object, int]] = {}
    while todo or running:
        while todo and pool.idle:
            shard, actor = todo.popleft(), pool.idle.popleft()
            running[actor.run.remote(shards[shard])] = (actor, shard)
        [ref], _ = ray.wait(list(running), num_returns=1)
        actor, shard = running.pop(ref)
        try:
            rows = ray.get(ref)
        except RayTaskError as exc:
            if isinstance(exc.cause, VbonError):
                raise type(exc.cause)(f"sampling shard {shard}: {exc.cause}") from None
            raise
        except RayActorError:
            attempts[shard] = attempts.get(shard, 0) + 1
            if attempts[shard] >= MAX_SHARD_ATTEMPTS:
                raise VbonError(
                    f"sampling shard {shard} lost its actor {attempts[shard]} times; "
                    "check the actors' memory (resources.cpus_per_actor) and the Ray logs"
                ) from None
            todo.appendleft(shard)
            pool.replace()
            continue
        on_done(shard, rows)
        pool.idle.append(actor)


def run_sampling(cfg: WorkflowConfig, out: Path, progress: bool = True) -> Path:
    """Sample M completions for every prompt into `out`, keeping any finished shards."""
    out = Path(out)
    key = sampling_hash(cfg)
    claim_folder(out, key, "sampling")
    prompts = load_prompts(cfg.data)
    shards = plan_shards(prompts, cfg)
    manifest = {
        "stage": "sampling",
        "config_hash": key,
        "config": cfg.model_dump(mode="json"),
        "num_prompts": len(prompts),
        "num_shards": len(shards),
        "m": cfg.m,
        "status": "running",
    }
    (out / "data").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "manifest.json", manifest)
    todo = deque(i for i in range(len(shards)) if not _part(out, i).is_file())
    done = len(prompts) - sum(len(shards[i]) for i in todo)
    bar = tqdm(
        total=len(prompts), initial=done, unit="prompt", desc="sampling", disable=not progress
    )
    start = time.perf_counter()
    ready, new_samples = start, 0
    if todo:
        _preflight(cfg)
        pool = _Pool(cfg, min(cfg.resources.sampling_actors, len(todo)))
        ready = time.perf_counter()

        def on_done(shard: int, rows: list[dict]) -> None:
            nonlocal new_samples
            _write_part(out, shard, rows)
            new_samples += len(rows) * cfg.m
            bar.update(len(rows))
            bar.set_postfix(samples_per_s=f"{new_samples / (time.perf_counter() - ready):.1f}")

        _run_shards(pool, shards, todo, on_done)
    bar.close()
    elapsed = time.perf_counter() - ready
    manifest["timing"] = {
        "startup_s": ready - start,
        "sampling_s": elapsed,
        "new_samples": new_samples,
        "samples_per_s": new_samples / max(elapsed, 1e-9),
    }
    manifest["status"] = "complete"
    write_json_atomic(out / "manifest.json", manifest)
    return out


def read_samples(out: Path, split: str | None = None) -> pa.Table:
    """The sampling output as an Arrow table sorted by prompt id, optionally one split."""
    import pyarrow.compute as pc

    table = pq.read_table(Path(out) / "data", schema=SCHEMA).sort_by("prompt_id")
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    return table


def load_samples(out: Path, split: str | None = None):
    """The sampling output as a `datasets.Dataset` sorted by prompt id, optionally one split."""
    import datasets

    return datasets.Dataset(read_samples(out, split))
