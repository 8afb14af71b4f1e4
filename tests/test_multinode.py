"""Faults on a real multi-node Ray (several raylets on loopback): a whole node dies mid-stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import ray
import torch
import yaml
from ray import serve
from ray_helpers import free_port, loopback_cluster, wait_for_checkpoint, wait_for_step

from vbon.config import parse_workflow
from vbon.errors import VbonError
from vbon.plots import read_steps
from vbon.sampling.stage import load_samples, run_sampling
from vbon.serving.app import APP_NAME
from vbon.serving.launch import serve_model
from vbon.training.stage import run_training

pytestmark = pytest.mark.slow


def _sampling_cfg():
    return parse_workflow(
        {
            "n": 2,
            "m": 4,
            "model": {"name_or_path": "builtin:tiny"},
            "data": {"max_prompts": 40},
            "sampling": {"shard_size": 4, "max_new_tokens": 24},
            "evaluation": {"n_values": [1, 2]},
            "resources": {"sampling_actors": 2, "cpus_per_actor": 1},
        }
    )


def _nodes_of(match: str) -> set[str]:
    """The Ray nodes of the live actors whose name or class contains `match` (from the GCS: the
    state API needs the dashboard, which these clusters do not run)."""
    return {
        a["Address"]["NodeID"]
        for a in ray._private.state.actors().values()
        if a["State"] == "ALIVE" and (match in a["Name"] or match in a["ActorClassName"])
    }


def _marked_dead(node_id: str, timeout: float = 30) -> bool:
    """Whether the GCS marks the node dead within `timeout` seconds (its health checks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == node_id):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.timeout(300)
def test_sampling_finishes_on_the_nodes_left_when_one_dies(tiny_path, tmp_path: Path) -> None:
    cfg = _sampling_cfg()
    with loopback_cluster([{"num_cpus": 1}, {"num_cpus": 1}]) as (cluster, nodes):
        clean_dir = run_sampling(cfg, tmp_path / "clean", progress=False)
        clean = load_samples(clean_dir).to_list()
        shards = len(list((clean_dir / "data").glob("part-*.parquet")))
        out, result = tmp_path / "faulted", {}
        thread = threading.Thread(
            target=lambda: result.setdefault("out", run_sampling(cfg, out, progress=False))
        )
        thread.start()
        deadline, killed = time.time() + 120, None
        while killed is None and time.time() < deadline and thread.is_alive():
            parts = list((out / "data").glob("part-*.parquet")) if (out / "data").exists() else []
            placed = _nodes_of("vbon-sampler-") if parts else set()
            if len(placed) == 2:  # both nodes at work: kill one, raylet and workers
                victim = next(n for n in nodes if n.node_id in placed)
                cluster.remove_node(victim, allow_graceful=False)
                killed = {"parts": len(parts), "node": victim.node_id}
            time.sleep(0.1)
        thread.join(timeout=200)
        assert killed is not None, "the run ended before a node could be killed"
        assert killed["parts"] < shards, "the node died after sampling had finished"
        assert _marked_dead(killed["node"]), "the killed node never left the cluster"
        rows = load_samples(result["out"]).to_list()
    assert [r["prompt_id"] for r in rows] == list(range(40)), "a prompt was lost or duplicated"
    assert rows == clean, "the faulted run differs from the unfaulted one"


def _training_raw(**training) -> dict:
    return {
        "name": "t",
        "n": 4,
        "m": 8,
        "model": {"name_or_path": "builtin:tiny"},
        "reward": {"kind": "callable", "function": "reward_fns:letter_e_share"},
        "data": {"max_prompts": 16},
        "sampling": {"shard_size": 32, "max_new_tokens": 12},
        "evaluation": {"n_values": [1, 2]},
        "resources": {"sampling_actors": 2, "train_workers": 2, "cpus_per_worker": 1},
        "training": {
            "estimator": "rloo",
            "prompts_per_step": 4,
            "samples_per_prompt": 4,
            "learning_rate": 2e-3,
            "steps": 14,
            "checkpoint_every": 5,
            **training,
        },
    }


def _weights(model: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model / "model.safetensors")


@pytest.mark.timeout(600)
def test_training_resumes_on_a_replacement_node(tiny_path, tmp_path: Path) -> None:
    """A Train worker's node dies in step 8 (the faulted run's reward holds there until the
    node is replaced, so the kill cannot miss a run of fast steps); training resumes from the
    step-5 checkpoint on the new node and ends bit-identical to an unfaulted run."""
    cfg = parse_workflow(_training_raw())
    held = _training_raw()
    held["reward"] = {"kind": "callable", "function": "reward_fns:letter_e_share_held"}
    release = tmp_path / "release"
    env = {"VBON_TEST_RELEASE": str(release)}
    with loopback_cluster([{"num_cpus": 1}, {"num_cpus": 1}], env=env) as (cluster, nodes):
        samples = run_sampling(cfg, tmp_path / "samples", progress=False)
        clean = run_training(cfg, samples, tmp_path / "clean")
        out, done = tmp_path / "faulted", {}
        thread = threading.Thread(
            target=lambda: done.setdefault("out", run_training(parse_workflow(held), samples, out))
        )
        thread.start()
        wait_for_step(out / "metrics.jsonl", 7)
        wait_for_checkpoint(out)  # step 5's, while step 8 holds
        workers = _nodes_of("RayTrainWorker")
        assert len(workers) == 2, "the two Train workers do not sit on two nodes"
        assert not _nodes_of("Controller") & workers, "the Train controller shares their nodes"
        victim = next(n for n in nodes if n.node_id in workers)
        cluster.remove_node(victim, allow_graceful=False)  # a Train worker's whole node
        killed_at = max(s["step"] for s in read_steps(out / "metrics.jsonl"))
        cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1)  # the replacement
        release.touch()
        thread.join(timeout=400)
        assert done.get("out") == out.resolve(), "training did not finish after the node died"
    assert killed_at == 7, "the node did not die in step 8"
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    [resume] = [e for e in events if e.get("event") == "resume"]
    assert resume["step"] == 5 and resume["optimizer_steps"] == 5
    assert [s["step"] for s in read_steps(out / "metrics.jsonl")] == list(range(1, 15))
    want, got = _weights(clean / "model"), _weights(out / "model")
    diff = max(float((want[k].float() - got[k].float()).abs().max()) for k in want)
    assert diff == 0.0, f"the resumed model differs from the unfaulted one by {diff:.3g}"


@pytest.mark.timeout(400)
def test_training_without_room_to_restart_fails_with_one_line(tiny_path, tmp_path: Path) -> None:
    cfg = parse_workflow(_training_raw(max_failures=1, steps=40))
    start_timeout = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "8"}
    with loopback_cluster([{"num_cpus": 1}, {"num_cpus": 1}], env=start_timeout) as (
        cluster,
        nodes,
    ):
        samples = run_sampling(cfg, tmp_path / "samples", progress=False)
        out, done = tmp_path / "train", {}

        def train() -> None:
            try:
                run_training(cfg, samples, out)
            except VbonError as exc:
                done["error"] = str(exc)

        thread = threading.Thread(target=train)
        thread.start()
        wait_for_step(out / "metrics.jsonl", 3)
        victim = next(n for n in nodes if n.node_id in _nodes_of("RayTrainWorker"))
        cluster.remove_node(victim, allow_graceful=False)
        thread.join(timeout=300)
        assert not thread.is_alive(), "training waited on after the cluster lost its room"
    error = done.get("error", "")
    assert "\n" not in error and error.startswith("training failed: "), error
    assert victim.node_id[:12] in error and "rerun the same command" in error, error
    assert str(out.resolve()) in error


def _serving_cfg(port: int):
    return parse_workflow(
        {
            "name": "mn",
            "model": {"name_or_path": "builtin:tiny"},
            "serving": {
                "port": port,
                "min_replicas": 2,
                "max_replicas": 2,
                "cpus_per_replica": 1,
                "proxy_location": "HeadOnly",
            },
        }
    )


def _replicas_on(nodes: int, timeout: float = 120) -> set[str]:
    """Wait until the Policy's replicas are alive on `nodes` distinct nodes; their nodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        placed = _nodes_of("Policy")
        status = serve.status().applications[APP_NAME].deployments["Policy"]
        if len(placed) == nodes and status.replica_states.get("RUNNING", 0) == nodes:
            return placed
        time.sleep(0.2)
    raise AssertionError(f"the Policy never ran on {nodes} nodes (it is on {_nodes_of('Policy')})")


class _Load:
    """`clients` threads, each sending one short completion after another until stopped:
    every request's start, end and status (None: no answer within the client timeout)."""

    def __init__(self, url: str, clients: int, timeout: float) -> None:
        self.url, self.timeout, self.log = url, timeout, []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(c,)) for c in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self, c: int) -> None:
        body = {"model": "mn", "prompt": "The film", "max_tokens": 8, "seed": c}
        with httpx.Client(timeout=self.timeout) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    r = client.post(f"{self.url}/v1/completions", json=body)
                    status, retry = r.status_code, r.headers.get("retry-after")
                except httpx.HTTPError:
                    status, retry = None, None
                self.log.append((start, time.monotonic(), status, retry))

    def finish(self) -> list[tuple]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2 * self.timeout)
        return sorted(self.log)


@pytest.mark.timeout(300)
def test_serving_loses_at_most_1_percent_when_a_replicas_node_dies(tiny_path) -> None:
    port = free_port()
    with loopback_cluster([{"num_cpus": 1}, {"num_cpus": 1}]) as (cluster, nodes):
        url = serve_model(_serving_cfg(port), "builtin:tiny")["url"]
        placed = _replicas_on(2)
        load = _Load(url, clients=8, timeout=30)
        time.sleep(3)
        victim = next(n for n in nodes if n.node_id in placed)
        killed = time.monotonic()
        cluster.remove_node(victim, allow_graceful=False)
        assert _marked_dead(victim.node_id)
        time.sleep(3)
        cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1)
        _replicas_on(2)
        recovered = time.monotonic()
        time.sleep(4)
        log = load.finish()
    before = [x for x in log if x[0] < killed]
    during = [x for x in log if killed <= x[0] < recovered]
    after = [x for x in log if x[0] >= recovered]
    slowest = max(end - start for start, end, *_ in log)
    print(
        f"failover: {len(during)} requests between the kill and recovery "
        f"({recovered - killed:.1f} s), {sum(x[2] != 200 for x in during)} failed; "
        f"{len(after)} after; slowest answer {slowest:.2f} s"
    )
    assert before and during and after
    assert all(s == 200 for *_, s, _ in before)
    failed = [x for x in during if x[2] != 200]
    assert all(s == 503 and retry for *_, s, retry in failed), failed
    assert len(failed) <= 0.01 * len(during), f"{len(failed)} of {len(during)} failed"
    assert all(s == 200 for *_, s, _ in after), "a request failed after the node came back"


def _own_disk(folders: list[str]) -> dict:
    """A 1-CPU worker node with its own Ray temp folder (short: socket paths are limited), noted
    in `folders` for removal."""
    folders.append(tempfile.mkdtemp(prefix="vn", dir="/tmp"))
    return {"num_cpus": 1, "temp_dir": folders[-1]}


@pytest.mark.timeout(600)
def test_a_submitted_job_survives_a_worker_node_lost_in_training(
    tiny_path, tmp_path, monkeypatch
) -> None:
    """`vbon submit` to the cluster's job server; a Train worker's node dies in step 8 (the
    reward holds there until the replacement has joined), and the job still SUCCEEDS (`vbon
    status`) with its logs showing the resume (`vbon logs`)."""
    # the job's `python` is this virtual environment's, as on a provisioned node
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    root = Path(__file__).resolve().parent.parent
    runs, port = tmp_path / "runs", free_port()
    raw = _training_raw() | {"name": "job", "run_dir": str(runs)}
    # the job imports from its working_dir (the project), so the module is tests.reward_fns;
    # its processes inherit the raylets' environment, which has the release file's name
    raw["reward"] = {"kind": "callable", "function": "tests.reward_fns:letter_e_share_held"}
    release = tmp_path / "release"
    monkeypatch.setenv("VBON_TEST_RELEASE", str(release))
    raw["data"] = {"max_prompts": 16, "test_fraction": 0.25}
    raw["evaluation"] = {"n_values": [1, 2], "samples_per_prompt": 2, "bootstrap": 20}
    raw["resources"] = raw["resources"] | {"ray_address": "auto"}
    workflow = root / "workflows" / f".test-job-{os.getpid()}.yaml"  # travels with the project
    workflow.write_text(yaml.safe_dump(raw))
    dashboard = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}
    vbon, address = [sys.executable, "-m", "vbon.cli"], f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(root)}
    # each raylet its own temp folder, as each machine has its own disk: the job's working_dir
    # is unpacked (and cleaned up) per node, and nodes sharing one folder race on it
    disks: list[str] = []
    proc = None
    try:
        with loopback_cluster([_own_disk(disks), _own_disk(disks)], head=dashboard) as (
            cluster,
            nodes,
        ):
            submit = [*vbon, "submit", str(workflow), "--address", address, "--wait"]
            proc = subprocess.Popen(submit, env=env, stdout=subprocess.PIPE, text=True)
            metrics = runs / "job" / "train" / "metrics.jsonl"
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                if metrics.is_file() and any(s["step"] >= 7 for s in read_steps(metrics)):
                    break
                time.sleep(0.2)
            assert proc.poll() is None, f"the job ended before step 7: {proc.communicate()[0]}"
            victim = next(n for n in nodes if n.node_id in _nodes_of("RayTrainWorker"))
            cluster.remove_node(victim, allow_graceful=False)
            killed_at = max(s["step"] for s in read_steps(metrics))
            cluster.add_node(node_ip_address="127.0.0.1", **_own_disk(disks))
            release.touch()
            out, _ = proc.communicate(timeout=400)
            job_id = out.split("submitted ", 1)[1].split()[0]
            logs, status = [
                subprocess.run(
                    [*vbon, command, job_id, "--address", address],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                ).stdout
                for command in ("logs", "status")
            ]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()  # the submitting client (this test's own process)
            proc.wait()
        workflow.unlink()
        for folder in disks:
            shutil.rmtree(folder, ignore_errors=True)
    resumed = next((x for x in logs.splitlines() if "[train] resumed from step" in x), None)
    print(f"job: node killed after step {killed_at}; {resumed}")
    assert proc.returncode == 0 and f"job {job_id}: SUCCEEDED" in out, out[-3000:]
    assert killed_at == 7, "the node did not die in step 8"
    assert status.strip() == "SUCCEEDED"
    assert "[train] resumed from step" in logs and "[3/3] evaluation: done" in logs, logs[-3000:]
    assert [s["step"] for s in read_steps(metrics)] == list(range(1, 15))
