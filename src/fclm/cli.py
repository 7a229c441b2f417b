"""`fclm` command line. Each subcommand lives beside the code it drives and registers itself here."""
from __future__ import annotations

import argparse
import importlib
import sys

# module path → it defines `register(subparsers)` adding one or more subcommands with set_defaults(func=...)
COMMAND_MODULES = [
    "fclm.model.cli_init",
    "fclm.train.cli_train",
    "fclm.train.cli_quickstart",
    "fclm.infer.cli_infer",
    "fclm.data.cli_data",
    "fclm.eval.cli_score",
    "fclm.eval.cli_eval",
    "fclm.serve.cli_serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fclm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # not built yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data.schema import FCLMDataError

    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except (FCLMDataError, FileNotFoundError) as e:
        print(f"fclm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
