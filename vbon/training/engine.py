"""DeepSpeed on each Ray Train worker: the ZeRO config, the optimiser, checkpoints, full weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from vbon.config import TrainingConfig


def deepspeed_config(t: TrainingConfig, micro_batch: int, bf16: bool) -> dict:
    """ZeRO stage and CPU offload from the config. Tiny parameters are partitioned too under
    ZeRO-3 (persistence threshold 0), and offload keeps the torch optimiser (no DeepSpeedCPUAdam
    build)."""
    zero: dict = {"stage": t.zero_stage}
    if t.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
    if t.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu"}
        if t.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_lambda(t: TrainingConfig) -> Callable[[int], float]:
    """Multiplier of the learning rate per optimiser step: 1, or a cosine decay to 0."""
    total = t.steps * t.update_epochs
    if t.lr_schedule == "cosine":
        return lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i, total) / total))
    return lambda i: 1.0


@contextmanager
def zero3_init(ds_config: dict):
    """While building the policy under ZeRO-3, `from_pretrained` loads weights already
    partitioned over the ranks (transformers' HfDeepSpeedConfig); a no-op otherwise."""
    if ds_config["zero_optimization"]["stage"] != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(ds_config)  # noqa: F841  (transformers holds only a weak reference)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()


def frozen_placement(ds_config: dict) -> Callable[[nn.Module], nn.Module]:
    """Where the frozen reference lives. Under ZeRO-3 it is a DeepSpeed inference engine (no
    optimiser, as OpenRLHF places its reference): loaded already partitioned inside
    `zero3_init`, each rank keeps 1/world of its weights, gathered layer by layer in its forward,
    so every rank must run the same reference forwards. Otherwise it stays whole on each rank."""
    zero = ds_config["zero_optimization"]
    if zero["stage"] != 3:
        return lambda model: model

    def place(model: nn.Module) -> nn.Module:
        import deepspeed

        keep = ("stage", "stage3_param_persistence_threshold", "offload_param")
        config = {
            "train_micro_batch_size_per_gpu": ds_config["train_micro_batch_size_per_gpu"],
            "zero_optimization": {k: v for k, v in zero.items() if k in keep},
            "bf16": ds_config["bf16"],
            "steps_per_print": ds_config["steps_per_print"],
        }
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()
        return engine

    return place


def skip_inference_kernels() -> None:
    """Before DeepSpeed's first use in a process. Its CPU communication backend JIT-compiles a
    shared-memory all-reduce kernel on start (measured: 35-40 s on 2 cores, once per node and
    environment) that only its tensor-parallel inference calls; training all-reduces through
    torch.distributed either way. So that kernel is marked unavailable, as DeepSpeed marks a
    kernel the machine cannot build (`deepspeed.ops.__compatible_ops__`)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def initialize(policy: nn.Module, t: TrainingConfig, ds_config: dict):
    """The DeepSpeed engine over the trainable parameters, AdamW and the LR schedule."""
    import deepspeed

    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t))
    engine, *_ = deepspeed.initialize(
        model=policy, optimizer=opt, lr_scheduler=sched, config=ds_config
    )
    return engine


@contextmanager
def whole_policy_for_generation(engine, enabled: bool):
    """Generation from the whole policy on every rank. Under ZeRO-3 (with `enabled`) the
    partitioned weights are all-gathered once for the whole `generate` call and DeepSpeed's
    per-module fetch/release hooks are lifted meanwhile; otherwise every decoding step would
    all-gather every layer again (measured: 83% of a ZeRO-3 step). Costs one whole copy of the
    policy per rank while it generates, as TRL's `ds3_gather_for_generation` does. Yields whether
    the ranks must still generate in lockstep (`synced_gpus`)."""
    if engine.zero_optimization_stage() != 3:
        yield False
        return
    if not enabled:
        yield True
        return
    import deepspeed

    offload = engine.optimizer.parameter_offload
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        for p in params:
            p.ds_active_sub_modules.clear()
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield False
        finally:
            coordinator = offload.get_param_coordinator()
            if not coordinator.is_invalid_trace():
                coordinator._invalidate_trace()  # generation's forwards are not a training trace
            offload._register_deepspeed_module(offload.module)


def full_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """Every weight of the trained module on rank 0 (None elsewhere). Under ZeRO-3 this is a
    collective: every rank must call it."""
    if engine.zero_optimization_stage() == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict() if engine.global_rank == 0 else None


def optimizer_steps(engine) -> int:
    """How many updates the optimiser state has seen (Adam's `step`), for resume checks."""
    for group in engine.optimizer.param_groups:
        for p in group["params"]:
            state = engine.optimizer.state.get(p, {})
            if "step" in state:
                return int(state["step"])
    opt = getattr(engine.optimizer, "optimizer", None)
    if opt is not None:
        for state in opt.state.values():
            if "step" in state:
                return int(state["step"])
    return 0
