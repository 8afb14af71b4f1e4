"""Prompt sources: a local JSON/JSONL/CSV/Parquet file, a hub data set, or `builtin:movie-reviews`.

Each prompt keeps its row index in the source as `prompt_id`, which seeds its samples, and the
train/test split is a fixed function of (ids, test_fraction, seed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from vbon.config import DataConfig
from vbon.data.movie_reviews import review_openings
from vbon.errors import DataError

_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Prompt:
    prompt_id: int
    text: str
    split: str


def _read_column(cfg: DataConfig) -> list[str]:
    if cfg.source == "builtin:movie-reviews":
        return review_openings()
    import datasets

    path = Path(cfg.source)
    try:
        if path.suffix in _FORMATS:
            if not path.is_file():
                raise DataError(f"data.source = {cfg.source!r}: no such file")
            ds = datasets.load_dataset(_FORMATS[path.suffix], data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(cfg.source, split=cfg.split)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types for unreadable sources
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read data.source = {cfg.source!r}: {reason}") from None
    if cfg.prompt_column not in ds.column_names:
        raise DataError(
            f"data.prompt_column = {cfg.prompt_column!r} is not a column of {cfg.source}; "
            f"its columns are {ds.column_names}"
        )
    values = ds[cfg.prompt_column]
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()), None)
    if bad is not None:
        raise DataError(
            f"row {bad} of {cfg.source} has no prompt text in column {cfg.prompt_column!r} "
            f"(got {values[bad]!r}); remove the row or fill it in"
        )
    return list(values)


def load_prompts(cfg: DataConfig) -> list[Prompt]:
    """All prompts with ids and a seeded train/test split (`cfg.max_prompts` keeps the first ones)."""
    texts = _read_column(cfg)[: cfg.max_prompts]
    if cfg.prompt_words:
        texts = [" ".join(t.split()[: cfg.prompt_words]) for t in texts]
    if not texts:
        raise DataError(f"data.source = {cfg.source!r} holds no prompts")
    ids = list(range(len(texts)))
    random.Random(cfg.seed).shuffle(ids)
    n_test = round(len(texts) * cfg.test_fraction)
    test = set(ids[:n_test])
    return [Prompt(i, t, "test" if i in test else "train") for i, t in enumerate(texts)]
