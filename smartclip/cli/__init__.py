"""The ``smartclip`` command: a thin dispatcher over the library.

Each sub-command lives in ``smartclip/cli/<module>.py`` and defines
``add_arguments(parser)`` and ``run(args) -> int``, and may define ``prepare(args)``: checks
that need no model (data, paths), run after ``--model`` is checked by name or path and before
its weights are downloaded or loaded; a number it returns is the exit status. Modules are imported only when their command runs, so ``smartclip --help``
stays fast. The console command (:func:`console`) runs with the thread counts of
:mod:`smartclip.threads`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from .. import __version__, threads

# command -> (module under smartclip.cli, one-line description)
COMMANDS = {
    "models": ("models", "list model names and create / inspect a model"),
    "train": ("train", "train or fine-tune from a YAML config with dotted overrides"),
    "eval": ("eval", "evaluate a model on registered benchmarks"),
    "data": ("data", "inspect and check datasets (smartclip data check PATH)"),
    "demo": ("demo", "embedded scene benchmark: CLIP vs SmartCLIP on a CPU"),
    "encode": ("encode", "image / text embeddings to .npy"),
    "search": ("search", "build and query an image index"),
    "masks": ("masks", "show which embedding dimensions captions select"),
    "export": ("export", "export a model to open_clip or Hugging Face format"),
    "serve": ("serve", "serve a search page over an index on loopback"),
    "generate": ("generate", "SDXL images from long prompts, SmartCLIP as the text encoder"),
    "eval-generation": ("eval_generation", "KID, precision / recall, DINO-L of generated images"),
}


def _available():
    return {name: spec for name, spec in COMMANDS.items()
            if importlib.util.find_spec(f"smartclip.cli.{spec[0]}") is not None}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _available()
    width = max(map(len, commands))
    top = argparse.ArgumentParser(
        prog="smartclip",
        description="SmartCLIP: train, evaluate and use CLIP models with text-conditioned masks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<{width}}  {h}" for n, (_, h) in commands.items()),
    )
    top.add_argument("command", choices=sorted(commands), metavar="COMMAND")
    top.add_argument("--version", action="version", version=f"smartclip {__version__}")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] == "--version":
        top.parse_args(argv[:1])  # prints the version and exits 0
    if argv[0] not in commands:
        top.parse_args(argv[:1])  # prints the valid choices and exits 2
    name = argv[0]
    module = importlib.import_module(f"smartclip.cli.{commands[name][0]}")
    parser = argparse.ArgumentParser(prog=f"smartclip {name}", description=commands[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        model = getattr(args, "model", None)
        if model:
            # every command that takes --model checks it before any other work, so a typo, a run
            # folder or an unknown tag is reported at once, in one line; nothing is downloaded yet
            from smartclip.factory import resolve_model
            resolve_model(model)
        prepare = getattr(module, "prepare", None)
        if prepare is not None:  # the data and paths, before any weights are downloaded or loaded
            status = prepare(args)
            if status is not None:
                return int(status)
        if model:
            resolve_model(model, download=True)  # an open_clip tag's weights (offline: one line)
        return int(module.run(args) or 0)
    except Exception as e:
        if not _is_model_not_found(e):
            raise
        print(f"smartclip {name}: error: {e}", file=sys.stderr)
        return 2


def console() -> int:
    """The ``smartclip`` console command (and ``python -m smartclip``): :func:`main` with the
    thread counts of :mod:`smartclip.threads`, set before any command imports torch so that
    OpenMP reads them. ``main(argv)`` called from Python leaves the caller's threads alone."""
    threads.configure()
    return main()


def _is_model_not_found(error: Exception) -> bool:
    # looked up, not imported: importing smartclip.checkpoint costs torch's start-up time, and
    # when it is not imported, nothing can have raised its error
    checkpoint = sys.modules.get("smartclip.checkpoint")
    return checkpoint is not None and isinstance(error, checkpoint.ModelNotFoundError)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())
