"""`vbon submit` against a real Ray head started by this test on free loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _ports(k: int) -> list[int]:
    socks = [socket.socket() for _ in range(k)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def ray_head():
    """`ray start --head --block` in its own temp folder; stopped by signalling that process."""
    gcs, dashboard, client, manager, objects = _ports(5)
    temp = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # short: Ray's socket paths are limited
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "DS_ACCELERATOR": "cpu"}
    # the job's `python` entry point is this virtual environment's, as on a provisioned node
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    cmd = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs}", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
        f"--node-manager-port={manager}", f"--object-manager-port={objects}",
        "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=true",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{address}/api/version", timeout=2).status_code in (200, 401):
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError("the Ray head never came up")
    yield address
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(temp, ignore_errors=True)


def test_submit_runs_a_workflow_as_a_ray_job(ray_head: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    raw = {
        "name": "submitted",
        "run_dir": str(runs),
        "n": 2,
        "m": 4,
        "model": {"name_or_path": "builtin:tiny"},
        "data": {"max_prompts": 16, "test_fraction": 0.25},
        "sampling": {"shard_size": 16, "max_new_tokens": 8},
        "training": {"estimator": "rloo", "samples_per_prompt": 2, "prompts_per_step": 2,
                     "steps": 2},
        "evaluation": {"n_values": [1, 2], "samples_per_prompt": 2, "bootstrap": 20},
        "resources": {"ray_address": "auto", "sampling_actors": 1, "train_workers": 2},
    }  # fmt: skip
    workflow = ROOT / "workflows" / f".test-submit-{os.getpid()}.yaml"  # travels with the project
    workflow.write_text(yaml.safe_dump(raw))
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token"}
        vbon = [sys.executable, "-m", "vbon.cli"]
        proc = subprocess.run(
            [*vbon, "submit", str(workflow), "--address", ray_head, "--wait"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        job_id = proc.stdout.split("submitted ", 1)[1].split()[0]
        assert "job " + job_id + ": SUCCEEDED" in proc.stdout
        status = subprocess.run(
            [*vbon, "status", job_id, "--address", ray_head],
            env=env,
            capture_output=True,
            text=True,
        )
        assert status.stdout.strip() == "SUCCEEDED"
        logs = subprocess.run(
            [*vbon, "logs", job_id, "--address", ray_head], env=env, capture_output=True, text=True
        )
        assert "[3/3] evaluation: done" in logs.stdout
        record = json.loads((runs / "submitted" / "run.json").read_text())
        assert {s: v["status"] for s, v in record["stages"].items()} == dict.fromkeys(
            ("sampling", "training", "evaluation"), "ran"
        )
    finally:
        workflow.unlink()


def test_submit_rejects_a_broken_workflow_before_sending(tmp_path: Path) -> None:
    bad = ROOT / "workflows" / f".test-bad-{os.getpid()}.yaml"
    bad.write_text("n: 1\n")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "vbon.cli", "submit", str(bad), "--address", "http://127.0.0.1:9"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 2 and "n = 1" in proc.stderr
    finally:
        bad.unlink()
