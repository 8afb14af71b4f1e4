"""`vbon serve` as users run it: a separate process with its own local Ray, stopped by SIGTERM."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from ray_helpers import RAY_ENV, free_port, worker_pythonpath

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the endpoint never became healthy")


def test_sigterm_finishes_requests_in_flight_then_exits_0_leaving_no_process(
    tmp_path: Path,
) -> None:
    """BoN-4 over the built-in tiny model with a scorer that takes 3 s: requests are in flight
    when SIGTERM arrives; they complete, later ones get 503, the process exits 0, and every
    process it started (Ray's GCS, raylet, agents, workers) is gone."""
    port = free_port()
    workflow = tmp_path / "serve.yaml"
    workflow.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "run_dir": str(tmp_path / "runs"),
                "reward": {"kind": "callable", "function": "reward_fns:slow_letter_e_share"},
                "resources": {"ray_address": None},
                "serving": {"port": port, "max_tokens": 16, "drain_s": 60},
            }
        )
    )
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": worker_pythonpath() + os.pathsep + str(ROOT)}
    cmd = [sys.executable, "-m", "vbon.cli", "serve", "builtin:tiny", "--workflow", str(workflow)]
    proc = subprocess.Popen(
        [*cmd, "--bon", "4"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert started  # Ray's own processes

        def ask() -> tuple[int, float]:
            body = {"model": "tiny", "prompt": "The film", "max_tokens": 8, "seed": 1}
            r = httpx.post(f"{url}/v1/completions", json=body, timeout=90)
            return r.status_code, time.monotonic()

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(ask) for _ in range(3)]
            time.sleep(1.5)  # in the scorer's 3 s
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            late = httpx.post(
                f"{url}/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=30
            )
            answers = [f.result() for f in futures]
        assert late.status_code == 503 and late.headers["retry-after"]
        assert all(code == 200 for code, _ in answers)
        assert all(done > signalled for _, done in answers)  # finished during the drain
        assert proc.wait(timeout=120) == 0
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [p.info for p in alive]
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
