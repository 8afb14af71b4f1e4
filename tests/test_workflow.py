"""One workflow through every stage on a real local Ray: sampling, 2-worker DeepSpeed training,
evaluation and a Serve endpoint; reruns skip what is unchanged; a failing stage is named."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from ray_helpers import free_port, local_ray

from vbon.config import parse_workflow
from vbon.errors import VbonError
from vbon.manifest import read_manifest
from vbon.workflow import local_run_dir, run_workflow

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(tiny_path):
    with local_ray():
        yield


def _cfg(run_dir: Path, **overrides):
    raw = {
        "name": "wf",
        "run_dir": str(run_dir),
        "n": 2,
        "m": 8,
        "model": {"name_or_path": "builtin:tiny"},
        "reward": {"kind": "callable", "function": "reward_fns:letter_e_share"},
        "data": {"max_prompts": 24, "test_fraction": 0.25},
        "sampling": {"shard_size": 32, "max_new_tokens": 10},
        "training": {
            "estimator": "rloo",
            "samples_per_prompt": 4,
            "prompts_per_step": 4,
            "steps": 4,
            "learning_rate": 1e-3,
        },
        "evaluation": {"n_values": [1, 2, 4], "samples_per_prompt": 2, "bootstrap": 50},
        "serving": {"port": _PORT, "max_tokens": 16},
        "resources": {"sampling_actors": 2, "train_workers": 2},
    }
    for section, values in overrides.items():
        raw[section] = {**raw[section], **values} if isinstance(values, dict) else values
    return parse_workflow(raw)


_PORT = free_port()


def _statuses(record: dict) -> dict[str, str]:
    return {stage: info["status"] for stage, info in record["stages"].items()}


def test_workflow_runs_skips_and_reruns_from_the_changed_stage(tmp_path: Path) -> None:
    lines: list[str] = []
    first = run_workflow(_cfg(tmp_path), log=lines.append)
    assert _statuses(first) == dict.fromkeys(
        ("sampling", "training", "evaluation", "serving"), "ran"
    )
    run = tmp_path / "wf"
    for folder in ("samples", "train", "eval", "serve"):
        assert read_manifest(run / folder)["status"] == "complete"
    assert (run / "train" / "model" / "model.safetensors").is_file()
    assert (run / "eval" / "pareto_win_rate.png").is_file()
    methods = [r["method"] for r in json.loads((run / "eval" / "results.json").read_text())["rows"]]
    assert methods == ["reference", "BoN N=2", "BoN N=4", "vBoN (l1)"]
    url = first["stages"]["serving"]["url"]
    body = {"model": "wf", "prompt": "The film", "max_tokens": 6, "seed": 1}
    answer = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"]

    again = run_workflow(_cfg(tmp_path), log=lines.append)
    assert set(_statuses(again).values()) == {"skipped"}
    assert json.loads((run / "run.json").read_text()) == again

    changed = run_workflow(_cfg(tmp_path, training={"learning_rate": 5e-4}), log=lines.append)
    assert _statuses(changed) == {
        "sampling": "skipped",
        "training": "ran",
        "evaluation": "ran",
        "serving": "ran",
    }
    assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200
    assert any("sampling: up to date, skipped" in line for line in lines)

    forced = run_workflow(
        _cfg(tmp_path, training={"learning_rate": 5e-4}), from_stage="evaluation", serve=False
    )
    assert _statuses(forced) == {"sampling": "skipped", "training": "skipped", "evaluation": "ran"}
    _cli_reuses_the_run(_cfg(tmp_path, training={"learning_rate": 5e-4}), tmp_path)


def test_a_failing_stage_is_named_and_earlier_stages_are_kept(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, data={"test_fraction": 0.05})  # 24 prompts: 1 held out, too few
    with pytest.raises(VbonError) as err:
        run_workflow(cfg, serve=False)
    assert str(err.value).startswith("stage evaluation failed: ") and "held-out" in str(err.value)
    run = tmp_path / "wf"
    assert read_manifest(run / "samples")["status"] == "complete"
    assert (run / "train" / "model" / "config.json").is_file()
    record = json.loads((run / "run.json").read_text())
    assert record["stages"]["evaluation"]["status"] == "failed"
    assert _statuses(record)["training"] == "ran"


def test_uri_run_dir_is_mirrored_and_pulled_back(tmp_path: Path) -> None:
    """A `file://` run_dir goes through pyarrow's file systems like s3:// would: each finished
    stage is mirrored there, and a machine without the staging folder skips what it holds."""
    import shutil

    from vbon.run_store import staging_dir

    uri = f"file://{tmp_path / 'remote'}"
    cfg = _cfg(tmp_path).model_copy(update={"run_dir": uri})
    first = run_workflow(cfg, serve=False)
    assert set(_statuses(first).values()) == {"ran"}
    remote = tmp_path / "remote" / "wf"
    for folder in ("samples", "train", "eval"):
        assert read_manifest(remote / folder)["status"] == "complete"
    assert (remote / "train" / "model" / "model.safetensors").is_file()
    assert json.loads((remote / "run.json").read_text()) == first

    shutil.rmtree(staging_dir(uri, "wf"))  # as if on another machine
    again = run_workflow(cfg, serve=False)
    assert set(_statuses(again).values()) == {"skipped"}
    assert (staging_dir(uri, "wf") / "eval" / "results.json").is_file()
    _cli_reuses_the_run(cfg, tmp_path)


def _cli_reuses_the_run(cfg, tmp_path: Path) -> None:
    """`vbon evaluate`, `vbon train` and `vbon sample` after `vbon run`: each runs the workflow
    up to its stage, finds it done, skips it and prints its result, on the same run folder,
    without starting Ray (which would log to the run folder's ray.log)."""
    import os
    import subprocess
    import sys

    import yaml
    from ray_helpers import RAY_ENV, worker_pythonpath

    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": worker_pythonpath()}
    for command, shown in (
        ("evaluate", "G (gain of BoN)"),
        ("train", "trained (vBoN (l1), 4 steps)"),
        ("sample", "samples: "),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "vbon.cli", command, str(wf)],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
        stages = [ln for ln in done.stdout.splitlines() if ln.startswith("[")]
        assert stages and all("up to date, skipped" in ln for ln in stages), done.stdout
        assert shown in done.stdout, done.stdout
        assert "WARNING" not in done.stdout + done.stderr  # Ray's chatter stays in its log
    assert not (local_run_dir(cfg) / "ray.log").exists()
