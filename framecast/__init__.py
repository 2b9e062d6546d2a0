"""The `framecast` command line: one dispatcher (framecast/cli.py) to which each package
(engine, server, distill, clients) contributes its subcommands, and the one error a
subcommand raises to fail with a message and an exit code. Every package may import this;
it imports nothing of the project and nothing heavy.

    framecast serve | demo | convert | build-engines | distill ... | eval | watch | video
    python -m framecast ...        # the same, e.g. under torchrun
"""


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


__all__ = ["CommandError"]
