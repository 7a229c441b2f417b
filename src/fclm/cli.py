"""`fclm` command line: one subcommand per task, each defined beside the code it drives.

Start-up is lazy: ``fclm --help`` is built from the static table :data:`COMMANDS` alone, and
``fclm CMD ...`` imports only the module that defines CMD (its ``register(subparsers)`` adds the real
parser). torch and transformers are imported only when a command that runs a model starts (see
:mod:`fclm_cli` for the console entry point that defers ``fclm/__init__``).

Errors: every failure the user can fix is one line ``fclm CMD: error: ...`` on stderr, exit status 2
(docs/cli.md lists them). An unexpected exception is one line too (exit 1); ``FCLM_DEBUG=1`` shows
its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name → (module defining `register(subparsers)`, one-line help, needs the model stack).
# Adding a command is one line here; the module's register() adds a parser of the same name with
# set_defaults(func=...). "needs the model stack": torch/transformers and fclm's Auto-class
# registration are loaded before the command runs; torch-free commands (False) never import them.
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "quickstart": ("fclm.train.cli_quickstart", "train + evaluate a tiny FCLM on synthetic scenes (CPU, no download)", True),
    "describe": ("fclm.infer.cli_infer", "describe image regions (detailed localized captions)", True),
    "classify": ("fclm.infer.cli_infer", "name the category of image regions", True),
    "segment": ("fclm.infer.cli_infer", "segment what a text refers to (one mask per [SEG])", True),
    "ground": ("fclm.infer.cli_infer", "grounded caption: phrases with one mask each (GCG)", True),
    "init": ("fclm.model.cli_init", "build an FCLM model folder", True),
    "train": ("fclm.train.cli_train", "train FCLM (stage 1 or 2) from a YAML config", True),
    "eval": ("fclm.eval.cli_eval", "run FCLM on a benchmark and score it with the reference protocol", True),
    "score": ("fclm.eval.cli_score", "score a prediction file on a benchmark (reference protocols)", False),
    "data": ("fclm.data.cli_data", "dataset tools (data check)", False),
    "serve": ("fclm.serve.cli_serve", "serve a model over an HTTP JSON API (dynamic batching)", True),
    "demo": ("fclm.serve.cli_serve", "browser demo: click a region, read its description; type text, see masks", True),
}

DEBUG_ENV = "FCLM_DEBUG"


class CLIError(Exception):
    """A usage error found after parsing (conflicting options, an unusable value): one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``fclm CMD: error: MESSAGE (see fclm CMD --help)``, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if any."""
    for a in argv:
        if not a.startswith("-"):
            return a
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `fclm` parser. With ``argv``: only the module of the command it names is imported (the
    other commands are placeholders that show their help line); without: every command is real."""
    parser = Parser(prog="fclm", description="FCLM: describe regions and ground text with one Qwen2.5-VL "
                                             "model. `fclm CMD --help` for each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="CMD")
    wanted = set(COMMANDS) if argv is None else {_command_in(argv)} & set(COMMANDS)
    for module in dict.fromkeys(COMMANDS[name][0] for name in COMMANDS if name in wanted):
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as e:
            if e.name != module:  # a missing dependency inside the module: a real error
                raise
    for name, (_, help_, _) in COMMANDS.items():
        if name not in sub.choices:  # not requested (or not installed): a placeholder with its help line
            sub.add_parser(name, help=help_, description=help_)
    _plain_help(parser)
    return parser


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Descriptions taken from docstrings lose their RST markup (``x``, :mod:`x`) in --help."""
    from .cli_args import plain

    if parser.description:
        parser.description = plain(parser.description)
    if parser._subparsers is not None:
        for p in parser._subparsers._group_actions[0].choices.values():
            _plain_help(p)


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost subcommand parser that ``args`` came through (``fclm data check`` ...)."""
    while parser._subparsers is not None:
        action = parser._subparsers._group_actions[0]
        name = getattr(args, action.dest, None)
        if name not in action.choices:
            break
        parser = action.choices[name]
    return parser


def finish_package_init() -> None:
    """Run ``fclm/__init__`` (torch, transformers, Auto-class registration) if the console entry
    point deferred it (:mod:`fclm_cli`); a no-op otherwise."""
    pkg = sys.modules.get("fclm")
    if pkg is not None and pkg.__dict__.pop("__fclm_deferred_init__", False):
        pkg.__dict__.pop("__getattr__", None)
        pkg.__spec__.loader.exec_module(pkg)


def _quiet_progress() -> None:
    """--no-progress: also silence transformers' / huggingface_hub's own bars (Loading weights, ...)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when they are imported (here and in workers)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def _input_warnings_shower(prog: str, default):
    """``warnings.showwarning`` that prints input warnings (e.g. an inverted-looking mask) as
    ``fclm CMD: warning: ...`` lines and passes the others to ``default``."""
    def show(message, category, filename, lineno, file=None, line=None):
        if category.__name__ == "FCLMInputWarning":
            print(f"{prog}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def _one_line(e: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(e).split()) or type(e).__name__


def _known_error(e: BaseException) -> str | None:
    from .data.schema import FCLMDataError

    if isinstance(e, (CLIError, FCLMDataError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                      PermissionError)):
        return _one_line(e)
    name = type(e).__name__
    if name == "SafetensorError":  # safetensors_rust: header or size check failed
        return f"cannot read a safetensors file ({_one_line(e)}): it is corrupted or truncated"
    if name in ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "RepositoryNotFoundError",
                "GatedRepoError") or (isinstance(e, OSError) and "huggingface.co" in str(e)):
        return (f"could not get files from the Hugging Face Hub ({_one_line(e).split('. ')[0]}); "
                f"download them where there is network and pass the local folder instead")
    if name == "OutOfMemoryError":
        return f"out of device memory ({_one_line(e)[:200]}); try --device cpu or a smaller batch"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    sub = _chosen(parser, args)
    prog = sub.prog
    if extra:  # reported by the subcommand's parser, which knows what it takes
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "func"):  # a command whose module is not installed
        print(f"{prog}: error: this command is not available in this installation", file=sys.stderr)
        return 2
    if getattr(args, "no_progress", False):
        _quiet_progress()
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    import warnings

    shown = warnings.showwarning
    warnings.showwarning = _input_warnings_shower(prog, shown)
    try:
        if getattr(args, "check", None) is not None:  # argument checks that need no model (before torch)
            args.check(args)
        if COMMANDS[args.command][2]:
            finish_package_init()
        rc = args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # raise SystemExit("message") in a command: a usage error
        if isinstance(e.code, str):
            print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        raise
    except Exception as e:
        if debug:
            raise
        msg = _known_error(e)
        if msg is not None:
            print(f"{prog}: error: {msg}", file=sys.stderr)
            return 2
        # last resort: still one line; the traceback is one environment variable away
        print(f"{prog}: error: unexpected {type(e).__name__}: {_one_line(e)[:300]} "
              f"(rerun with {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown
    return int(rc or 0)


if __name__ == "__main__":  # `python -m fclm.cli` (accelerate launch -m fclm.cli ...)
    # Run the imported module's main, so that the CLIError the commands raise (fclm.cli.CLIError) is
    # the class main recognises, not a second copy defined in __main__.
    from fclm.cli import main as _main

    sys.exit(_main())
