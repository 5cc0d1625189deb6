"""What every ``python -m logvmamba...`` command does with an error it expects.

A bad dataset, config, checkpoint or file ends the command with one line on
stderr, ``error: <path>: <what is wrong>``, and exit status 2; ``--debug`` or
``LOGVMAMBA_DEBUG=1`` shows the traceback instead. Other exceptions are bugs
and keep their traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["EXIT_ERROR", "add_debug_flag", "command", "one_line"]

#: exit status of a command stopped by an expected error (argparse uses 2 for usage errors too)
EXIT_ERROR = 2


def add_debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also LOGVMAMBA_DEBUG=1)")
    return parser


def _expected() -> tuple[type[BaseException], ...]:
    # ValueError covers DatasetError, CheckpointError, ConfigError and json's decode errors
    kinds: list[type[BaseException]] = [OSError, ValueError, KeyError]
    try:
        import yaml

        kinds.append(yaml.YAMLError)
    except ImportError:
        pass
    return tuple(kinds)


def one_line(err: BaseException) -> str:
    """``err`` as one line (a KeyError without the quotes ``str`` adds)."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def _debug(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("LOGVMAMBA_DEBUG", "").strip() not in ("", "0")


def command(main: Callable | None = None, *, also: tuple[type[BaseException], ...] = ()) -> Callable:
    """Wrap ``main(argv)`` so that an expected error (or one of ``also``) prints one line and
    returns :data:`EXIT_ERROR`; use as ``@command`` or ``@command(also=(SomeError,))``."""
    if main is None:
        return functools.partial(command, also=also)

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        try:
            return main(args) or 0
        except (*_expected(), *also) as err:
            if _debug(args):
                raise
            print(f"error: {one_line(err)}", file=sys.stderr)
            return EXIT_ERROR

    return wrapper
