"""A local Ray for tests: loopback only, tests/ importable by workers, shut down afterwards."""

from __future__ import annotations

import os
import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
