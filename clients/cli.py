"""The `framecast` command: one dispatcher, subcommands contributed by each package.

Packages register subcommands through the ``framecast.commands`` entry-point group
(see pyproject.toml); each entry is a ``register(subparsers)`` function that adds
its parsers and sets ``func`` on them. Registration must stay light (no torch at
import): heavy imports happen inside the command's handler. A group whose
dependencies are missing (a client-only install without torch) is skipped, so
`framecast watch` works without the model stack.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framecast", description="Real-time streaming video generation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="framecast.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError:
            continue  # that package's dependencies are not installed here
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Under `python -m clients.cli` this file runs as __main__ while handlers import
    # clients.cli: two CommandError classes. Catch the one handlers raise as well.
    from clients.cli import CommandError as handlers_error

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CommandError, handlers_error) as exc:
        print(f"framecast {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
