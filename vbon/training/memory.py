"""This rank's model-state memory, counted tensor by tensor: the parameters of the policy and the
frozen reference (under ZeRO-3 only this rank's partition), the reduced gradients DeepSpeed holds
before the optimizer step, and the optimizer state (fp32 master partitions and Adam's moments).
A storage shared by several tensors (DeepSpeed's flat buffers and their views) counts once, in
the first of those three groups that holds it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

MIB = 2**20
_gradients_mib = 0.0  # the largest gradient footprint seen since the last `model_states`


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, list | tuple):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _mib(tensors: Iterable[torch.Tensor], seen: set[int]) -> float:
    """MiB of the storages not already in `seen` (which they are added to)."""
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total / MIB


def _parameters(modules: Iterable[nn.Module]) -> Iterator[torch.Tensor]:
    for module in modules:
        for p in module.parameters():
            yield getattr(p, "ds_tensor", p.data)  # ZeRO-3: the local partition only


def _gradients(engine) -> Iterator[torch.Tensor]:
    """DeepSpeed's gradient buffers (attributes of its ZeRO optimizer named for gradients) and
    any plain `.grad`."""
    for name, value in vars(engine.optimizer).items():
        if "grad" in name or "ipg" in name:
            yield from _tensors(value)
    yield from (p.grad for p in engine.module.parameters() if p.grad is not None)


def _optimizer(engine) -> Iterator[torch.Tensor]:
    """The fp32 master partitions and the torch optimizer's state (Adam's two moments)."""
    for name, value in vars(engine.optimizer).items():
        if "fp32" in name:
            yield from _tensors(value)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    yield from _tensors(inner.state)
    for group in inner.param_groups:
        yield from group["params"]


def note_gradients(engine) -> None:
    """Call between backward and the optimizer step, where the gradients are resident."""
    global _gradients_mib
    seen: set[int] = set()
    _mib(_parameters([engine.module]), seen)
    _gradients_mib = max(_gradients_mib, _mib(_gradients(engine), seen))


def model_states(engine, frozen: nn.Module | None) -> dict[str, float]:
    """{mem_params_mib, mem_grads_mib, mem_optimizer_mib} of this rank; the gradients are the
    largest footprint noted since the last call."""
    global _gradients_mib
    seen: set[int] = set()
    params = _mib(_parameters([engine.module, *([frozen] if frozen is not None else [])]), seen)
    _mib(_gradients(engine), seen)
    out = {
        "mem_params_mib": params,
        "mem_grads_mib": _gradients_mib,
        "mem_optimizer_mib": _mib(_optimizer(engine), seen),
    }
    _gradients_mib = 0.0
    return out
