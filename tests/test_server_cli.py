"""`framecast serve` as users run it: real subprocesses, exit codes and messages; settings
from the environment and flags."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server.commands import _settings, register
from server.settings import Settings
from tests.server_fixtures import free_port

FRAMECAST = [str(Path(sys.executable).parent / "framecast")]  # the installed entry point
ROOT = Path(__file__).resolve().parent.parent


def framecast(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(FRAMECAST + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def test_bad_model_path_exits_cleanly(tmp_path):
    result = framecast("serve", "--model", str(tmp_path / "no-such-model"), "--port", str(free_port()),
                       "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "no model named" in result.stderr and "Traceback" not in result.stderr


def test_port_in_use_exits_cleanly(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = framecast("serve", "--model", "tiny-random", "--port", str(port), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "port in use" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_runs_until_stopped_then_exits_cleanly(tmp_path, stop):
    port = free_port()
    proc = subprocess.Popen(FRAMECAST + ["serve", "--model", "tiny-random", "--port", str(port), "--data-dir",
                                         str(tmp_path), "--log-level", "warning"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert models["data"][0]["id"] == "tiny-random"
        proc.send_signal(stop)
        assert proc.wait(60) == 0
        assert (tmp_path / "jobs.sqlite3").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_flags_override_environment(monkeypatch, tmp_path):
    import argparse

    monkeypatch.setenv("FRAMECAST_API_KEYS", "env-a, env-b")
    monkeypatch.setenv("FRAMECAST_MAX_SESSIONS", "3")
    monkeypatch.setenv("FRAMECAST_PORT", "9001")
    assert Settings().api_keys == ["env-a", "env-b"] and Settings().max_sessions == 3
    monkeypatch.setenv("FRAMECAST_API_KEYS", '["json-a"]')
    assert Settings().api_keys == ["json-a"]

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--port", "9100", "--api-key", "flag-a", "--no-batching",
                              "--data-dir", str(tmp_path)])
    settings = _settings(args)
    assert settings.port == 9100 and settings.api_keys == ["flag-a"] and settings.batching is False
    assert settings.max_sessions == 3  # not given as a flag: the environment's value stands
    assert settings.resolved_job_store_url() == f"sqlite:///{tmp_path / 'jobs.sqlite3'}"


def test_invalid_setting_is_a_clean_error():
    import argparse

    from framecast import CommandError

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    with pytest.raises(CommandError, match="max_sessions"):
        _settings(parser.parse_args(["serve", "--max-sessions", "0"]))
