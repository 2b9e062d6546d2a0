"""bench/gpu_wheels.py install, the half that runs on the GPU machine: every needed
distribution is checked in its own interpreter, the missing ones that were carried are
installed, and what is still missing is named (never parsed out of a library's output)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def make_wheel(folder: Path, name: str, version: str, source: str) -> str:
    """A pure-Python wheel of one module `name` whose import runs `source`."""
    filename = f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / filename, "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    return filename


def entry(name: str, modules: list[str], wheel: str | None = None, specifier: str = "") -> dict:
    return {"name": name, "version": "1.0", "modules": modules, "specifier": specifier, "needed_by": ["framecast"],
            "image_version": None, "wheel": wheel, "bytes": 0}


def install(wheels: Path, target: Path, entries: list[dict]) -> subprocess.CompletedProcess:
    running = ".".join(map(str, sys.version_info[:2]))
    (wheels / "manifest.json").write_text(json.dumps({"python_version": running, "for": "image",
                                                      "requirements": entries}))
    return subprocess.run([sys.executable, str(REPO / "bench" / "gpu_wheels.py"), "install", "--wheels", str(wheels),
                           "--target", str(target)], capture_output=True, text=True, timeout=300)


@pytest.fixture
def wheels(tmp_path) -> Path:
    folder = tmp_path / "whl"
    folder.mkdir()
    return folder


def test_installs_what_is_missing_and_names_what_is_not_carried(wheels, tmp_path):
    # A library that prints at import (the old gpu.sh read such output as package names).
    noisy = make_wheel(wheels, "fc_noisy", "1.0", "print('Error: something a library says at import')\n")
    entries = [entry("pytest", ["pytest"]), entry("fc-noisy", ["fc_noisy"], noisy),
               entry("fc-absent", ["fc_absent"]), entry("pytest", ["pytest"], specifier="<1")]
    proc = install(wheels, tmp_path / "site", entries[:3])
    assert proc.returncode == 2
    assert "1 of the 3 packages" in proc.stderr and "fc-absent" in proc.stderr and "no wheel carried" in proc.stderr
    assert "fc-noisy" not in proc.stderr and (tmp_path / "site" / "fc_noisy" / "__init__.py").is_file()

    proc = install(wheels, tmp_path / "site2", entries[:2])
    assert proc.returncode == 0, proc.stderr
    assert "installed from" in proc.stdout and "fc-noisy" in proc.stdout

    proc = install(wheels, tmp_path / "site3", [entries[3]])
    assert proc.returncode == 2 and "is installed; needs <1" in proc.stderr


def test_a_module_that_fails_to_import_is_named_with_its_error(wheels, tmp_path):
    broken = make_wheel(wheels, "fc_broken", "1.0", "import fc_dependency_nobody_carried\n")
    proc = install(wheels, tmp_path / "site", [entry("fc-broken", ["fc_broken"], broken)])
    assert proc.returncode == 2
    assert "installed from its carried wheel, but the import fails" in proc.stderr
    assert "No module named 'fc_dependency_nobody_carried'" in proc.stderr
