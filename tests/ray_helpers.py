"""A local Ray for tests: loopback only, tests/ importable by workers, shut down afterwards."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

TESTS = Path(__file__).resolve().parent
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every listener on 127.0.0.1
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # ray.train.report returns sooner
    "DS_ACCELERATOR": "cpu",
}


def worker_pythonpath() -> str:
    return os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])


@contextmanager
def local_ray() -> Iterator[None]:
    """An in-process 2-CPU Ray whose workers can import tests/ (reward functions)."""
    os.environ.update(RAY_ENV)
    ray.init(
        address="local",  # never a cluster another test started (ray_current_cluster)
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}},
    )
    try:
        yield
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def wait_for_step(metrics: Path, step: int, timeout: float = 240) -> None:
    """Until a training run's metrics.jsonl has logged `step`."""
    from vbon.plots import read_steps

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and any(s["step"] >= step for s in read_steps(metrics)):
            return
        time.sleep(0.2)
    raise AssertionError(f"training never reached step {step}")


def wait_for_checkpoint(train_dir: Path, timeout: float = 240) -> None:
    """Until Ray Train's controller has registered a checkpoint of the run in `train_dir`. A
    reported checkpoint is kept only once the controller has polled it (every 2 s), so a fault
    test that kills a worker before then would find nothing to resume from."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for snapshot in train_dir.glob("ray-train/**/checkpoint_manager_snapshot.json"):
            try:
                latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
            except json.JSONDecodeError:  # written while we read it
                continue
            if latest:
                return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint registered in {train_dir}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# fast node-death detection: the GCS marks a silent raylet dead after about 2 s, not 30 s
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 500,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 4,
}


@contextmanager
def loopback_cluster(
    workers: list[dict], env: dict[str, str] | None = None, head: dict | None = None
) -> Iterator[tuple[object, list]]:
    """A real multi-node Ray on this machine (`ray.cluster_utils.Cluster`, as Ray's own
    node-failure tests use): a head raylet with no CPUs for work (the GCS and this driver), then
    one raylet per entry of `workers` (its `add_node` arguments: num_cpus, resources); `head`: more
    head arguments (a dashboard for jobs). Yields
    the cluster and the worker nodes; `cluster.remove_node(node, allow_graceful=False)` SIGKILLs
    one node's processes by their PIDs. `env`: more variables for every worker. Everything
    listens on 127.0.0.1 and is stopped here."""
    os.environ.update(RAY_ENV)
    from ray import serve
    from ray.cluster_utils import Cluster

    loopback = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "_system_config": FAST_HEALTH_CHECKS,
            **loopback,
            **(head or {}),
        },
    )
    try:
        nodes = [cluster.add_node(node_ip_address="127.0.0.1", **w) for w in workers]
        ray.init(
            address=cluster.address,
            runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath(), **(env or {})}},
        )
        yield cluster, nodes
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        cluster.shutdown()
