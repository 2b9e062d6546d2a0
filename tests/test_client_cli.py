"""`framecast watch` and `framecast video` as a user runs them, against a real server:
recordings checked with ffprobe, and the exit code and message for each failure."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from clients.framecast_client import ExitCode, FramecastClientSync, ServerFull
from tests.client_fixtures import (FRAMECAST, REPO, DroppingProxy, ServerProcess, closed_port, ffprobe, run_cli,
                                   shared_server, wait_until)

KEY = "test-key-7f3a"


@pytest.fixture
def server():
    return shared_server()


@pytest.fixture
def guarded_server():
    return shared_server(FRAMECAST_API_KEYS=KEY, FRAMECAST_MAX_SESSIONS="1")


def framecast(capsys, *args: str) -> tuple[int, str, str]:
    """`framecast ARGS` in this process (a subprocess costs seconds of start-up per call):
    exit code, stdout, stderr."""
    from framecast.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def no_client_environment(monkeypatch):
    monkeypatch.delenv("FRAMECAST_URL", raising=False)
    monkeypatch.delenv("FRAMECAST_API_KEY", raising=False)


def watch_process(url: str, output: Path, *args: str) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if k not in ("FRAMECAST_URL", "FRAMECAST_API_KEY")}
    return subprocess.Popen([*FRAMECAST, "watch", "a red ball", "--url", url, "-o", str(output), *args],
                            cwd=REPO, env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def part_size(output: Path) -> int:
    part = Path(str(output) + ".part")
    return part.stat().st_size if part.exists() else 0


def test_watch_records_fmp4_with_a_scripted_prompt_switch(server, tmp_path):
    out = tmp_path / "live.mp4"
    done = run_cli("watch", "a red ball", "--url", server.url, "--seconds", "2", "--seed", "5", "-o", str(out),
                   "--prompt-at", "0.5:a blue square")
    assert done.returncode == 0, done.stderr
    assert f"saved {out}" in done.stdout
    assert "prompt switch" in done.stderr and "from frame 8" in done.stderr and "ms later" in done.stderr
    assert "32 frames, 2.00s of video" in done.stderr
    stream = ffprobe(out)["streams"][0]
    assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", 64, 64)
    assert int(stream["nb_read_frames"]) == 32
    assert not Path(str(out) + ".part").exists()


def test_watch_records_jpeg_as_h264(server, tmp_path, capsys):
    out = tmp_path / "jpeg.mp4"
    code, _, err = framecast(capsys, "watch", "a red ball", "--url", server.url, "--seconds", "1", "--format",
                             "jpeg", "-o", str(out))
    assert code == 0, err
    facts = ffprobe(out)
    assert facts["streams"][0]["codec_name"] == "h264"
    assert int(facts["streams"][0]["nb_read_frames"]) == 16
    assert float(facts["format"]["duration"]) == pytest.approx(1.0, abs=0.1)


def test_video_job_downloads_the_clip(server, tmp_path, capsys, monkeypatch):
    out = tmp_path / "clip.mp4"
    monkeypatch.setenv("FRAMECAST_URL", server.url)
    code, stdout, err = framecast(capsys, "video", "a red ball", "-o", str(out), "--seconds", "1", "--seed", "2")
    assert code == 0, err
    assert f"saved {out}" in stdout and ", job " in stdout
    assert int(ffprobe(out)["streams"][0]["nb_read_frames"]) == 16


def test_server_down_exit_code_and_message(tmp_path):
    """As a user runs it: the installed command in its own process."""
    url = f"http://127.0.0.1:{closed_port()}"
    done = run_cli("watch", "a red ball", "--url", url)
    assert done.returncode == ExitCode.UNAVAILABLE, done.stderr
    assert "server unreachable" in done.stderr and "connection refused" in done.stderr
    assert "Traceback" not in done.stderr


def test_server_down_for_video_jobs(tmp_path, capsys):
    url = f"http://127.0.0.1:{closed_port()}"
    code, _, err = framecast(capsys, "video", "a red ball", "-o", str(tmp_path / "x.mp4"), "--url", url)
    assert code == ExitCode.UNAVAILABLE, err
    assert "server unreachable" in err and "connection refused" in err
    assert not (tmp_path / "x.mp4").exists()


def test_unauthorized_exit_code_and_message(guarded_server, tmp_path, capsys, monkeypatch):
    for key in (None, "wrong"):
        if key:
            monkeypatch.setenv("FRAMECAST_API_KEY", key)
        for args in (("watch", "a red ball", "--seconds", "1"), ("video", "a red ball", "-o", str(tmp_path / "v.mp4"))):
            code, _, err = framecast(capsys, *args, "--url", guarded_server.url)
            assert code == ExitCode.UNAUTHORIZED, err
            assert "unauthorized" in err and ("required" in err if key is None else "invalid" in err)


def test_server_full_exit_code_and_message(guarded_server, capsys):
    held = []

    def hold_the_only_slot() -> bool:  # a slot freed by an earlier test frees a moment after it closed
        try:
            held.append(client.stream("a red ball", format="jpeg", max_seconds=60))
            return True
        except ServerFull:
            return False

    with FramecastClientSync(guarded_server.url, api_key=KEY) as client:
        wait_until(hold_the_only_slot, 15, "a free stream slot")
        try:
            code, _, err = framecast(capsys, "watch", "a red ball", "--url", guarded_server.url, "--api-key", KEY,
                                     "--seconds", "1")
        finally:
            held[0].stop()
    assert code == ExitCode.SERVER_FULL, err
    assert "server full" in err


def test_server_killed_mid_stream_exit_code_message_and_partial_recording(tmp_path):
    out = tmp_path / "cut.mp4"
    with ServerProcess(tmp=tmp_path) as victim:
        watcher = watch_process(victim.url, out, "--seconds", "60")
        wait_until(lambda: part_size(out) > 4000, 60, "the recording to start")
        victim.kill()
        stdout, stderr = watcher.communicate(timeout=60)
    assert watcher.returncode == ExitCode.CONNECTION_LOST, stderr
    assert "connection lost" in stderr and "Traceback" not in stderr
    assert int(ffprobe(out)["streams"][0]["nb_read_frames"]) > 0  # what arrived is kept, playable


def test_reconnect_keeps_recording_one_continuous_file(server, tmp_path):
    out = tmp_path / "reconnected.mp4"
    with DroppingProxy(server.port) as proxy:
        watcher = watch_process(proxy.url, out, "--seconds", "3", "--reconnect", "2")
        wait_until(lambda: part_size(out) > 4000, 60, "the recording to start")
        proxy.drop_all()
        stdout, stderr = watcher.communicate(timeout=90)
        connections = proxy.connections
    assert watcher.returncode == 0, stderr
    assert "reconnecting" in stderr and "1 reconnect(s)" in stderr
    assert connections == 2
    facts = ffprobe(out)
    frames = int(facts["streams"][0]["nb_read_frames"])
    assert frames == 48, stderr
    assert float(facts["format"]["duration"]) == pytest.approx(3.0, abs=0.07)


def test_ctrl_c_stops_cleanly_and_keeps_the_file(server, tmp_path):
    out = tmp_path / "interrupted.mp4"
    watcher = watch_process(server.url, out)  # no --seconds: runs until stopped
    wait_until(lambda: part_size(out) > 4000, 60, "the recording to start")
    watcher.send_signal(signal.SIGINT)
    stdout, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, stderr
    assert "ended: stopped" in stderr and f"saved {out}" in stdout
    assert int(ffprobe(out)["streams"][0]["nb_read_frames"]) > 0


@pytest.mark.parametrize("args, message", [
    (("watch", "x", "--prompt-at", "soon:blue"), "expected SECONDS:PROMPT"),
    (("watch", "x", "--url", "ftp://host"), "bad address"),
    (("watch", "", "--url", "http://127.0.0.1:9"), "invalid prompt"),
    (("video", "x"), "required: -o"),
])
def test_usage_errors_exit_2(args, message, capsys):
    code, _, err = framecast(capsys, *args)
    assert code == ExitCode.USAGE, err
    assert message in err


def test_help_documents_exit_codes_and_environment(capsys):
    code, out, _ = framecast(capsys, "watch", "--help")
    assert code == 0
    assert "exit codes" in out and "FRAMECAST_URL" in out and "--reconnect" in out
