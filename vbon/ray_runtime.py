"""Starting Ray: a local in-process cluster on loopback, or an existing cluster by address."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from vbon.config import ResourcesConfig


@contextmanager
def ray_session(resources: ResourcesConfig) -> Iterator[None]:
    """Use the Ray already initialised by the caller, or start one and shut it down on exit.

    With no `ray_address`, the local cluster listens on 127.0.0.1 only.
    """
    if ray.is_initialized():
        yield
        return
    if resources.ray_address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # reports return sooner
    ray.init(address=resources.ray_address, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()
