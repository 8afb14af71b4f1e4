"""The sampling stage driver: shards prompts over a pool of Ray actors (`vbon.actor_pool`), writes
Parquet as shards finish, survives dead actors and resumes interrupted runs.

Output folder:
    manifest.json             config, its hash, shard count, status
    data/part-00000.parquet   one row per prompt (see `Sampler.run`), one file per shard
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from vbon.actor_pool import ActorPool
from vbon.config import WorkflowConfig
from vbon.data.prompts import Prompt, load_prompts
from vbon.manifest import begin, claim_folder, config_hash, finish, is_complete
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
        ("token_ids", pa.list_(pa.list_(pa.int32()))),
        ("num_tokens", pa.list_(pa.int32())),
    ]
)
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
    """Fixed consecutive chunks of about `sampling.shard_size` sequences (M per prompt)."""
    per_shard = max(1, cfg.sampling.shard_size // cfg.m)
    return [prompts[i : i + per_shard] for i in range(0, len(prompts), per_shard)]


def _part(out: Path, shard: int) -> Path:
    return out / "data" / f"part-{shard:05d}.parquet"


def _write_part(out: Path, shard: int, rows: list[dict]) -> None:
    path = _part(out, shard)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
    os.replace(tmp, path)


def _preflight(cfg: WorkflowConfig) -> None:
    """Fail fast in the driver, with one line, on a model or reward that cannot load; this also
    builds a `builtin:` model once instead of in every actor."""
    load_tokenizer(cfg.model)
    build_scorer(cfg.reward)


def run_sampling(cfg: WorkflowConfig, out: Path, progress: bool = True) -> Path:
    """Sample M completions for every prompt into `out`, keeping any finished shards."""
    out = Path(out)
    key = sampling_hash(cfg)
    done = claim_folder(out, key, "sampling")
    if is_complete(out, key) and all(_part(out, i).is_file() for i in range(done["num_shards"])):
        return out  # nothing to do; keeps the first run's timing
    prompts = load_prompts(cfg.data)
    shards = plan_shards(prompts, cfg)
    manifest = begin(
        out,
        "sampling",
        key,
        config=cfg.model_dump(mode="json"),
        num_prompts=len(prompts),
        num_shards=len(shards),
        m=cfg.m,
    )
    (out / "data").mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(len(shards)) if not _part(out, i).is_file()]
    done = len(prompts) - sum(len(shards[i]) for i in todo)
    bar = tqdm(
        total=len(prompts), initial=done, unit="prompt", desc="sampling", disable=not progress
    )
    start = time.perf_counter()
    ready, new_samples = start, 0
    if todo:
        _preflight(cfg)
        res = cfg.resources
        opts = {"num_cpus": res.cpus_per_actor, "num_gpus": res.gpus_per_actor}
        pool = ActorPool(
            lambda _, name: _SamplerActor.options(name=name, **opts).remote(cfg),
            res.sampling_actors,
            "sampler",
        )
        ready = time.perf_counter()
        order = list(todo)

        def on_done(i: int, rows: list[dict]) -> None:
            nonlocal new_samples
            _write_part(out, order[i], rows)
            new_samples += len(rows) * cfg.m
            bar.update(len(rows))
            bar.set_postfix(samples_per_s=f"{new_samples / (time.perf_counter() - ready):.1f}")

        pool.run(
            [(None, (shards[i],)) for i in order], on_done, lambda i: f"sampling shard {order[i]}"
        )
    bar.close()
    elapsed = time.perf_counter() - ready
    timing = {
        "startup_s": ready - start,
        "sampling_s": elapsed,
        "new_samples": new_samples,
        "samples_per_s": new_samples / max(elapsed, 1e-9),
    }
    finish(out, manifest, timing=timing)
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
