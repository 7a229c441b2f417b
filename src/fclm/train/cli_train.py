"""`fclm train --config FILE [--strategy {ddp,fsdp,zero2,zero3}] [--nproc N] [--cpu] [--resume DIR]`.

With ``--strategy``/``--nproc`` it launches itself through ``accelerate launch`` with the packaged
accelerate config of the strategy; ``accelerate launch --config_file configs/accelerate/S.yaml -m
fclm.cli train --config FILE`` works as well. ``--dry-run --gpus N --gpu-memory G`` prints the
per-GPU memory plan instead of training.
"""
from __future__ import annotations

import os

from ..cli import CLIError
from ..cli_args import add_progress_flag, check_pretrained_source


def register(sub) -> None:
    p = sub.add_parser("train", help="train FCLM (stage 1 or 2) from a YAML config", description=__doc__,
                       epilog="examples:\n"
                              "  fclm train --config configs/train/fclm-3b-stage1.yaml --strategy fsdp --nproc 8\n"
                              "  fclm train --config C --strategy fsdp --nproc 2 --cpu      # gloo, for tests\n"
                              "  fclm train --config C --strategy zero3 --gpus 8 --gpu-memory 80 --dry-run",
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML training config (configs/train/*.yaml)")
    p.add_argument("--resume", help="run folder or checkpoint to resume from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set steps=100 --set optim.lr=1e-4")
    p.add_argument("--strategy", help="ddp | fsdp | zero2 | zero3 (configs/accelerate/STRATEGY.yaml)")
    p.add_argument("--nproc", type=int, help="processes on this machine (default: one per GPU)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU (gloo) even where GPUs exist")
    p.add_argument("--num-machines", type=int, default=1, help="machines of a multi-node run")
    p.add_argument("--machine-rank", type=int, default=0, help="this machine's rank in a multi-node run")
    p.add_argument("--main-ip", help="address of machine 0 (multi-node)")
    p.add_argument("--port", type=int, help="rendezvous port (default: accelerate's)")
    p.add_argument("--dry-run", action="store_true", help="print the per-GPU memory plan and exit")
    p.add_argument("--gpus", type=int, help="with --dry-run: GPUs in all (default: nproc × machines, or 8)")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="with --dry-run: GiB per GPU")
    p.add_argument("--preset", choices=["fclm-3b", "fclm-7b"], help="with --dry-run: plan this model size instead")
    p.add_argument("--seq-len", type=int, default=1400, help="with --dry-run: tokens per sample")
    add_progress_flag(p)
    p.set_defaults(func=run, check=check)


def check(args) -> None:
    """The config reads, and the weights it starts from can be had — before torch is imported."""
    from .config import load_train_config

    try:
        cfg = load_train_config(args.config, args.set)
    except ValueError as e:  # bad value or unknown key: the message names the file and the key
        raise CLIError(str(e)) from e
    if cfg.model.init == "pretrained" and not args.dry_run:  # a memory plan needs no weights
        for key in ("llm", "sam"):
            check_pretrained_source(getattr(cfg.model, key), f"{args.config}: model.{key}",
                                    how=f"set model.{key} to DIR in the config (or --set model.{key}=DIR)")


def _child_argv(args, strategy: str) -> list[str]:
    argv = ["--config", os.path.abspath(args.config), "--strategy", strategy]
    if args.resume:
        argv += ["--resume", args.resume]
    for s in args.set:
        argv += ["--set", s]
    if args.no_progress:
        argv.append("--no-progress")
    return argv


def run(args) -> int:
    """Strategy and checkpoint problems raise StrategyError (a CLIError): ``fclm.cli.main`` prints
    them as one line with exit status 2, like every other command's."""
    import logging
    import subprocess

    from .config import load_train_config
    from .strategies import STRATEGIES, StrategyError, launch_command, require_deepspeed, strategy_from_env

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_train_config(args.config, args.set)
    launched = "LOCAL_RANK" in os.environ  # inside accelerate launch / torchrun
    if args.strategy is not None and args.strategy not in STRATEGIES:
        raise StrategyError(f"unknown strategy {args.strategy!r}; choose from {', '.join(STRATEGIES)}")
    strategy = args.strategy or (strategy_from_env() if launched else "ddp")
    if args.nproc is not None and args.nproc < 1:
        raise StrategyError(f"--nproc must be ≥ 1, got {args.nproc}")
    if args.dry_run:
        from .memory_plan import plan_for_config, render

        gpus = args.gpus or (args.nproc or 8) * args.num_machines
        print(render(plan_for_config(cfg, strategy, gpus, args.gpu_memory, seq_len=args.seq_len, preset=args.preset)))
        return 0
    require_deepspeed(strategy)

    if launched:
        env_strategy, world = strategy_from_env(), int(os.environ.get("WORLD_SIZE", "1"))
        if args.strategy and env_strategy != args.strategy:
            raise StrategyError(f"--strategy {args.strategy} but the launcher set up {env_strategy} "
                                f"(accelerate config {env_strategy}.yaml?)")
        if args.nproc and args.nproc * args.num_machines != world:
            raise StrategyError(f"--nproc {args.nproc} × {args.num_machines} machine(s) but the launcher "
                                f"started {world} processes")
        return _train(cfg, args)

    if args.cpu and strategy.startswith("zero"):
        raise StrategyError(f"strategy {strategy} (DeepSpeed) needs GPUs; on the CPU use ddp or fsdp")
    import torch

    gpus = 0 if args.cpu else torch.cuda.device_count()
    nproc = args.nproc or max(gpus, 1)
    if gpus and nproc > gpus:
        raise StrategyError(f"--nproc {nproc} but this machine has {gpus} GPU(s)")
    if not gpus and strategy.startswith("zero"):
        raise StrategyError(f"strategy {strategy} (DeepSpeed) needs GPUs; none found (use ddp or fsdp with --cpu)")
    if args.resume:  # refuse before starting N processes
        from .checkpoint import check_resumable, find_checkpoint

        ckpt = find_checkpoint(args.resume)
        if ckpt is None:
            raise FileNotFoundError(f"no checkpoint to resume from in {args.resume}")
        check_resumable(ckpt, strategy, nproc * args.num_machines)
    if strategy == "ddp" and nproc == 1 and args.num_machines == 1:
        return _train(cfg, args)  # one process: no launcher
    cmd = launch_command(strategy, nproc * args.num_machines, _child_argv(args, strategy), cfg.precision,
                         port=args.port, num_machines=args.num_machines, machine_rank=args.machine_rank,
                         main_ip=args.main_ip)
    env = dict(os.environ)
    if args.cpu or not gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    rc = subprocess.run(cmd, env=env).returncode
    if rc != 0:
        raise StrategyError(f"the {strategy} run failed (launcher exit status {rc}; see the messages above)")
    return 0


def _train(cfg, args) -> int:
    from .trainer import Trainer

    trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
    final = trainer.run()
    print(f"final model: {final}")
    return 0
