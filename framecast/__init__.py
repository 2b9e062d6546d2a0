"""The `framecast` command line: one dispatcher (framecast/cli.py) to which each package
(engine, server, distill, clients) contributes its subcommands, the one error a subcommand
raises to fail with a message and an exit code, and the input limits every layer shares.
Every package may import this; it imports nothing of the project and nothing heavy.

    framecast serve | demo | convert | build-engines | distill ... | eval | watch | video
    python -m framecast ...        # the same, e.g. under torchrun
"""


# Input limits every layer enforces (the wire protocol, the server, the engine).
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**63 - 1


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


__all__ = ["CommandError", "MAX_PROMPT_CHARS", "MAX_SEED"]
