"""`fclm train --config FILE [--resume DIR] [--set key=value ...]`."""
from __future__ import annotations

from ..cli import CLIError
from ..cli_args import add_progress_flag, check_pretrained_source


def register(sub) -> None:
    p = sub.add_parser("train", help="train FCLM (stage 1 or 2) from a YAML config",
                       description="Train FCLM. Run under accelerate launch for several processes/GPUs.")
    p.add_argument("--config", required=True, help="YAML training config (configs/train/*.yaml)")
    p.add_argument("--resume", help="run folder or checkpoint to resume from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set steps=100 --set optim.lr=1e-4")
    add_progress_flag(p)
    p.set_defaults(func=run, check=check)


def check(args) -> None:
    """The config reads, and the weights it starts from can be had — before torch is imported."""
    from .config import load_train_config

    try:
        cfg = load_train_config(args.config, args.set)
    except ValueError as e:  # bad value or unknown key: the message names the file and the key
        raise CLIError(str(e)) from e
    if cfg.model.init == "pretrained":
        for key in ("llm", "sam"):
            check_pretrained_source(getattr(cfg.model, key), f"{args.config}: model.{key}",
                                    how=f"set model.{key} to DIR in the config (or --set model.{key}=DIR)")


def run(args) -> int:
    import logging

    from .config import load_train_config
    from .trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_train_config(args.config, args.set)
    final = Trainer(cfg, resume=args.resume, progress=not args.no_progress).run()
    print(f"final model: {final}")
    return 0
