"""Exceptions the client raises, each with the CLI exit code it maps to.

One class per thing a user can act on: the server is not there, it is full, the key
is wrong, the connection dropped, a clip job failed, or the two ends disagree about
the protocol. Exit codes live here (not in the CLI) so scripts that wrap the library
and the `framecast` command agree on them.
"""

from __future__ import annotations


class ExitCode:
    OK = 0
    ERROR = 1  # the server refused the request for another reason (bad prompt, ...)
    USAGE = 2  # argparse and CommandError's default
    UNAVAILABLE = 3
    UNAUTHORIZED = 4
    SERVER_FULL = 5
    CONNECTION_LOST = 6
    JOB_FAILED = 7
    PROTOCOL = 8
    INTERRUPTED = 130


class FramecastError(Exception):
    """Base class. `code` is the server's error code when it sent one."""

    exit_code = ExitCode.ERROR

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidAddress(FramecastError):
    """The server address given is not an http(s):// or ws(s):// URL."""

    exit_code = ExitCode.USAGE


class ServerUnavailable(FramecastError):
    """Nothing answered: connection refused, unknown host, or a connect timeout."""

    exit_code = ExitCode.UNAVAILABLE


class Unauthorized(FramecastError):
    """The server wants an API key and ours is missing or wrong."""

    exit_code = ExitCode.UNAUTHORIZED


class ServerFull(FramecastError):
    """Admission control refused a new session or job; retrying later may work."""

    exit_code = ExitCode.SERVER_FULL


class ConnectionLost(FramecastError):
    """An open stream ended without `session.done` (server died, network dropped)."""

    exit_code = ExitCode.CONNECTION_LOST

    def __init__(self, message: str, code: str | None = None, close_code: int | None = None):
        super().__init__(message, code)
        self.close_code = close_code


class ProtocolError(FramecastError):
    """The server sent something the protocol does not allow (or we timed out on a reply)."""

    exit_code = ExitCode.PROTOCOL


class RequestRejected(FramecastError):
    """The server understood and refused the request (invalid prompt, unknown model, ...)."""

    exit_code = ExitCode.ERROR


class JobFailed(FramecastError):
    """A clip job ended in `failed` or `cancelled`; `job` is its last state."""

    exit_code = ExitCode.JOB_FAILED

    def __init__(self, message: str, job=None, code: str | None = None):
        super().__init__(message, code)
        self.job = job


def error_for_code(code: str, message: str) -> FramecastError:
    """Map a protocol error code (HTTP body or WebSocket `error`) to an exception."""
    if code == "unauthorized":
        return Unauthorized(message, code)
    if code in ("server_full", "rate_limited", "queue_full"):
        return ServerFull(message, code)
    if code in ("shutting_down", "stalled"):  # stalled: this client read nothing for too long
        return ConnectionLost(message, code)
    if code == "internal_error":
        return FramecastError(message, code)
    return RequestRejected(message, code)
