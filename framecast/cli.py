"""The `framecast` dispatcher. Packages register subcommands through the
``framecast.commands`` entry-point group (see pyproject.toml); each entry is a
``register(subparsers)`` function that adds its parsers and sets ``func`` on them.
Registration must stay light (no torch at import): heavy imports happen inside the
command's handler. A group whose dependencies are missing is skipped."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from framecast import CommandError


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"framecast {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
