"""Distributed strategies (``ddp``, ``fsdp``, ``zero2``, ``zero3``): accelerate configs and the Accelerator.

Each strategy is one accelerate config under ``fclm/configs/accelerate/``. ``fclm train --strategy S``
launches ``accelerate launch --config_file S.yaml``; a run launched by hand with one of those files
is recognised from the environment accelerate sets. On a CPU-only machine accelerate only knows
gloo data parallelism, so ``fsdp`` there is FSDP2 set up through accelerate's own FSDP path on gloo
(the tests run it that way); DeepSpeed needs GPUs.
"""
from __future__ import annotations

import importlib.util
import os

import torch
from importlib import resources

from ..cli import CLIError

STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")


class StrategyError(CLIError, ValueError):
    """A strategy that cannot run as asked (one line, shown as ``fclm train: error: …``)."""


def accelerate_config(strategy: str) -> str:
    """Path of the packaged accelerate config of ``strategy``."""
    if strategy not in STRATEGIES:
        raise StrategyError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    return str(resources.files("fclm").joinpath("configs", "accelerate", f"{strategy}.yaml"))


def read_accelerate_config(path: str) -> dict:
    """An accelerate config file as a dict (the strategy's shape checked)."""
    import yaml

    if not os.path.exists(path):
        raise FileNotFoundError(f"accelerate config not found: {path}")
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict) or "distributed_type" not in cfg:
        raise StrategyError(f"{path}: not an accelerate config (no distributed_type)")
    return cfg


def strategy_of_config(cfg: dict) -> str:
    kind = str(cfg.get("distributed_type", "NO")).upper()
    if kind == "FSDP":
        return "fsdp"
    if kind == "DEEPSPEED":
        return f"zero{int((cfg.get('deepspeed_config') or {}).get('zero_stage', 2))}"
    return "ddp"


def strategy_from_env(env=os.environ) -> str:
    """The strategy ``accelerate launch`` set up for this process (``ddp`` when none)."""
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return f"zero{int(env.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '2'))}"
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp"


def require_deepspeed(strategy: str) -> None:
    if strategy.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        raise StrategyError(f"strategy {strategy} needs DeepSpeed, which is not installed: "
                            "pip install 'fclm[deepspeed]' (or use --strategy fsdp)")


def make_accelerator(precision: str, grad_accum: int):
    """The Accelerator of this process, for the strategy its launcher set up; returns (acc, strategy)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    strategy = strategy_from_env()
    require_deepspeed(strategy)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    # under a launcher on a CPU-only machine accelerate sets up gloo only when told to use the CPU;
    # otherwise every process would train alone as rank 0
    cpu = not torch.cuda.is_available() and ("LOCAL_RANK" in os.environ or launched > 1)
    if cpu and strategy != "ddp" and strategy != "fsdp":
        raise StrategyError(f"strategy {strategy} (DeepSpeed) needs GPUs; on the CPU use ddp or fsdp")
    acc = Accelerator(mixed_precision=precision, cpu=cpu, gradient_accumulation_steps=grad_accum,
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if launched > 1 and acc.num_processes != launched:
        raise StrategyError(f"{launched} processes were launched but accelerate set up {acc.num_processes}: "
                            "check the launcher's distributed settings")
    if strategy == "fsdp" and acc.distributed_type == DistributedType.MULTI_CPU:
        _fsdp_on_gloo(acc)
    return acc, strategy


def _fsdp_on_gloo(acc) -> None:
    """Turn accelerate's gloo data parallelism into its FSDP2 path (accelerate enables FSDP for
    accelerator devices only; FSDP2 itself runs on CPU tensors over gloo)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables accelerate launch set
    if plugin.fsdp_version != 2:
        raise StrategyError("fsdp on the CPU needs fsdp_version: 2 in the accelerate config")
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    assert acc.distributed_type == DistributedType.FSDP and acc.is_fsdp2


def configure_deepspeed(acc, per_device_batch: int, grad_clip: float) -> None:
    """Values DeepSpeed needs before ``prepare`` when no DataLoader goes through accelerate."""
    plugin = getattr(acc.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = per_device_batch
    ds["train_batch_size"] = per_device_batch * acc.gradient_accumulation_steps * acc.num_processes
    ds["gradient_accumulation_steps"] = acc.gradient_accumulation_steps
    ds["gradient_clipping"] = float(grad_clip or 0.0)


def launch_command(strategy: str, nproc: int, argv: list[str], precision: str, port: int | None = None,
                   num_machines: int = 1, machine_rank: int = 0, main_ip: str | None = None) -> list[str]:
    """``accelerate launch`` command running ``fclm train`` with ``argv`` under ``strategy``."""
    import shutil
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "accelerate")
    exe = exe if os.path.exists(exe) else (shutil.which("accelerate") or "accelerate")
    cmd = [exe, "launch", "--config_file", accelerate_config(strategy), "--num_processes", str(nproc),
           "--num_machines", str(num_machines), "--machine_rank", str(machine_rank),
           "--mixed_precision", precision, "--dynamo_backend", "no"]
    if strategy == "ddp":
        cmd.append("--multi_gpu")  # a single-machine torchrun launch even for one process
    if main_ip:
        cmd += ["--main_process_ip", main_ip]
    if port:
        cmd += ["--main_process_port", str(port)]
    return cmd + ["-m", "fclm.cli", "train", *argv]


def touch_root_parameters(module, args, output):
    """Forward hook (fsdp): give every trainable weight of the root shard group a gradient.

    FSDP2 reduce-scatters a group's gradients as one flat buffer and leaves out weights whose
    gradient is None; a batch without ``[SEG]`` or regions leaves the mask decoder or region
    extractor unused on one rank only, and the ranks' buffers would no longer match. The root
    group's weights are still unsharded here (FSDP2 keeps the root unsharded after forward); the
    weights of separately sharded layers are DTensors again and always ran.
    """
    from torch.distributed.tensor import DTensor

    if getattr(output, "loss", None) is None:
        return None
    touch = [p.reshape(-1)[:1].sum() for p in module.parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if touch:
        output.loss = output.loss + 0.0 * torch.stack(touch).sum()
    return None


def drop_untouched_gradients(model, acc) -> None:
    """After the reduce (fsdp): a weight whose gradient is zero on every rank got it only from
    :func:`touch_root_parameters` — no rank used it this step. Give it no gradient, so AdamW skips
    it (no momentum step) exactly as in a one-process or DDP run."""
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not params:
        return
    local = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params]
    used = torch.stack([(g != 0).any() if g.numel() else torch.zeros((), dtype=torch.bool, device=g.device)
                        for g in local]).float()
    used = acc.reduce(used, reduction="sum")
    for p, u in zip(params, used.tolist()):
        if u == 0:
            p.grad = None


def init_adamw_state(optimizer) -> None:
    """Give every parameter the state AdamW would create at its first step (step 0, zero moments).

    A sharded (DCP) optimizer checkpoint is loaded into a state that has an entry for every
    parameter; a weight that no batch used before the save (no region yet, say) would have none
    in the checkpoint and the load would fail. The values are exactly AdamW's lazy initial ones,
    so the updates do not change.
    """
    opt = getattr(optimizer, "optimizer", optimizer)
    for group in opt.param_groups:
        for p in group["params"]:
            if p.requires_grad and not opt.state.get(p):
                opt.state[p] = {"step": torch.tensor(0.0, dtype=torch.float32),
                                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
