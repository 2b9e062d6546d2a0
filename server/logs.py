"""Credentials never reach a log line: `?api_key=` values (uvicorn's access and WebSocket
lines log the whole query string), bearer tokens, the key subprotocol, and the configured
keys themselves wherever they appear.

Redaction happens where log records are made (the record factory), not in a filter: a
filter on a logger misses what its children propagate, and the handlers belong to whoever
runs the server (uvicorn's log config, the CLI's basicConfig, a user's own setup).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Iterable

REDACTED = "[redacted]"
PATTERNS = [
    (re.compile(r"(?i)([?&]api_key=)[^&\s\"']*"), r"\1" + REDACTED),
    (re.compile(r"(?i)(\bbearer\s+)[^\s\"',]+"), r"\1" + REDACTED),
    (re.compile(r"(framecast\.key\.)[A-Za-z0-9_-]+"), r"\1" + REDACTED),
]
# Configured keys are also replaced wherever they appear; shorter strings than this would
# blank out ordinary words in unrelated lines.
MIN_LITERAL_KEY = 8

_keys: set[str] = set()
_lock = threading.Lock()
_installed = False


def redact(text: str) -> str:
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    for key in _keys:
        if key in text:
            text = text.replace(key, REDACTED)
    return text


def _redacted(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def install_redaction(keys: Iterable[str] = ()) -> None:
    """From now on every log record of this process is made redacted (idempotent; the keys
    of every app created in the process are added)."""
    global _installed
    with _lock:
        _keys.update(key for key in keys if len(key) >= MIN_LITERAL_KEY)
        if _installed:
            return
        make_record = logging.getLogRecordFactory()

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            record.msg = _redacted(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(_redacted(arg) for arg in record.args)
            elif isinstance(record.args, dict):
                record.args = {name: _redacted(arg) for name, arg in record.args.items()}
            return record

        logging.setLogRecordFactory(redacting_factory)
        _installed = True
