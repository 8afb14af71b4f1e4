"""The sampling stage on a real local Ray with the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import pytest
import ray
from ray_helpers import local_ray

from vbon.config import parse_workflow
from vbon.data.prompts import load_prompts
from vbon.errors import DataError, RewardError, VbonError
from vbon.models import load_tokenizer
from vbon.rewards import build_scorer
from vbon.sampling.stage import load_samples, run_sampling

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(tiny_path):
    with local_ray():
        yield


def _cfg(actors: int = 2, prompts: int = 12, **extra):
    raw = {
        "n": 2,
        "m": 4,
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"max_prompts": prompts},
        "sampling": {"shard_size": 8, "max_new_tokens": 10},
        "evaluation": {"n_values": [1, 2]},
        "resources": {"sampling_actors": actors},
    }
    raw.update(extra)
    return parse_workflow(raw)


def _rows(folder: Path) -> list[dict]:
    return load_samples(folder).to_list()


@pytest.fixture(scope="module")
def one_actor_run(tmp_path_factory) -> Path:
    return run_sampling(_cfg(actors=1), tmp_path_factory.mktemp("one") / "samples", progress=False)


def test_output_schema_and_contents(one_actor_run: Path) -> None:
    ds = datasets.load_dataset(
        "parquet", data_files=str(one_actor_run / "data" / "*.parquet"), split="train"
    )
    assert set(ds.column_names) == {
        "prompt_id",
        "split",
        "prompt",
        "completions",
        "rewards",
        "token_ids",
        "num_tokens",
    }
    assert sorted(ds["prompt_id"]) == list(range(12))
    manifest = json.loads((one_actor_run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["m"] == 4
    scorer = build_scorer(_cfg().reward)
    tok = load_tokenizer(_cfg().model)
    for row in ds:
        assert len(row["completions"]) == len(row["rewards"]) == len(row["token_ids"]) == 4
        assert row["rewards"] == pytest.approx(
            scorer.score([row["prompt"]] * 4, row["completions"])
        )
        assert [len(ids) for ids in row["token_ids"]] == row["num_tokens"]
        texts = [tok.decode(ids, skip_special_tokens=True) for ids in row["token_ids"]]
        assert texts == row["completions"]  # the ids training learns from are the texts scored
        assert all(1 <= n <= 10 for n in row["num_tokens"])
    assert {row["split"] for row in ds} == {"train", "test"}


def test_two_actors_give_identical_samples(one_actor_run: Path, tmp_path: Path) -> None:
    two = run_sampling(_cfg(actors=2), tmp_path / "samples", progress=False)
    assert _rows(two) == _rows(one_actor_run)


def test_killed_actor_loses_no_prompt(tmp_path: Path) -> None:
    cfg = _cfg(actors=2, prompts=40, sampling={"shard_size": 4, "max_new_tokens": 24})
    out = tmp_path / "samples"
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("out", run_sampling(cfg, out, progress=False))
    )
    thread.start()
    deadline, killed_at = time.time() + 120, None
    while killed_at is None and time.time() < deadline and thread.is_alive():
        parts = list((out / "data").glob("part-*.parquet")) if (out / "data").exists() else []
        names = ray.util.list_named_actors() if parts else []
        victims = [n for n in names if n.startswith("vbon-sampler-")]
        if victims:
            ray.kill(ray.get_actor(victims[0]), no_restart=True)
            killed_at = len(parts)
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed_at is not None and killed_at < 40, "the run ended before an actor could be killed"
    rows = _rows(result["out"])
    assert [r["prompt_id"] for r in rows] == list(range(40))
    reference = run_sampling(
        _cfg(actors=1, prompts=40, sampling={"shard_size": 4, "max_new_tokens": 24}),
        tmp_path / "again",
        progress=False,
    )
    assert rows == _rows(reference)


def test_resume_keeps_finished_shards(one_actor_run: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "samples"
    shutil.copytree(one_actor_run, out)
    parts = sorted((out / "data").glob("part-*.parquet"))
    for p in parts[1:3]:
        p.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (parts[0], *parts[3:])}
    run_sampling(_cfg(actors=2), out, progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert all(p.exists() for p in parts[1:3])
    assert _rows(out) == _rows(one_actor_run)
    with pytest.raises(VbonError, match="holds sampling output of a different config"):
        run_sampling(_cfg(actors=1, m=8), out, progress=False)


def test_nan_reward_stops_with_the_prompt_and_keeps_finished_work(tmp_path: Path) -> None:
    cfg = _cfg(
        actors=1,
        prompts=20,
        reward={"kind": "callable", "function": "reward_fns:nan_for_fishermen"},
    )
    out = tmp_path / "samples"
    with pytest.raises(
        RewardError, match=r"sampling shard \d+: reward nan \(not finite\).*fishermen"
    ):
        run_sampling(cfg, out, progress=False)
    assert len(list((out / "data").glob("part-*.parquet"))) >= 1


def test_missing_prompt_column_is_one_clear_line(tmp_path: Path) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"text": "a"}\n{"text": "b"}\n')
    cfg = _cfg(data={"source": str(data), "prompt_column": "prompt"})
    with pytest.raises(
        DataError, match=r"data.prompt_column = 'prompt' is not a column .* columns are \['text'\]"
    ):
        load_prompts(cfg.data)
    wf = tmp_path / "wf.yaml"
    wf.write_text(json.dumps(cfg.model_dump(mode="json")))
    proc = subprocess.run(
        [sys.executable, "-m", "vbon.cli", "sample", str(wf), "--run-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()  # one line, and nothing from Ray
    assert line.startswith("vbon: error: stage sampling failed: data.prompt_column = 'prompt'")


def test_chat_template_renders_prompts_for_an_instruct_model() -> None:
    """With data.chat_template the prompt is wrapped in the model's chat format before sampling;
    the reward still sees the raw prompt."""
    from vbon.data.prompts import Prompt
    from vbon.sampling.actor import Sampler
    from vbon.sampling.generate import render_prompt

    cfg = _cfg(
        model={"name_or_path": "builtin:smollm2-135m-instruct"},
        data={"chat_template": True},
        sampling={"max_new_tokens": 6},
    )
    sampler = Sampler(cfg)
    rendered = render_prompt(sampler.tok, "Review this film.", chat_template=True)
    assert rendered.count("Review this film.") == 1 and rendered != "Review this film."
    assert "<|im_start|>" in rendered
    [row] = sampler.run([Prompt(0, "Write one word.", "train")])
    assert row["prompt"] == "Write one word."
    assert len(row["completions"]) == 4 and all(n >= 1 for n in row["num_tokens"])


def test_unloadable_model_fails_fast_with_one_line(tmp_path: Path) -> None:
    cfg = _cfg(model={"name_or_path": str(tmp_path / "no-model")})
    with pytest.raises(
        VbonError, match=r"cannot load the tokenizer from model.name_or_path = '.*no-model'"
    ):
        run_sampling(cfg, tmp_path / "samples", progress=False)
