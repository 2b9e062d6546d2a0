"""The packages bench/gpu.py needs beyond torch, carried as wheels to a GPU machine that
has no network (bench/gpu.sh runs both halves).

    python bench/gpu_wheels.py fetch [--dest .whl] [--python-version 3.12] [--for image|bare]

On a machine with PyPI: pip resolves what the benchmark imports (diffusers, pydantic, numpy,
safetensors, at this repository's pins) with every dependency, as wheels for the target
Python on manylinux x86_64. It keeps the wheels the target lacks: `--for image` (default)
the lent GPU image, whose packages bench/gpu_image.txt lists (a version the image has that
a requirement excludes is carried too); `--for bare` a Python with torch alone. DEST gets
those wheels and manifest.json, which lists every distribution of the closure, carried or
not. Exit 1 when the wheels and this repository's working tree exceed what one device call
carries (64 MiB).

    python bench/gpu_wheels.py install [--wheels .whl] --target DIR

On the GPU machine, before anything is installed (standard library only): each distribution
of the manifest is checked in its own interpreter (installed, at a version its dependants
accept, and each of its modules imports). Those that fail and are carried are installed
into DIR (pip --no-index --no-deps --target: nothing of the image's is overwritten; DIR
goes first on PYTHONPATH), then everything is checked again. Exit 2 with one line per
distribution that is still missing, and what to fetch.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_PACKAGES = REPO / "bench" / "gpu_image.txt"
MANIFEST = "manifest.json"
# What bench/gpu.py imports beyond torch (through engine/): the rest comes as their dependencies.
BENCH_NEEDS = ("diffusers", "pydantic", "numpy", "safetensors")
CARRY_LIMIT_MIB = 64  # the working tree + carried paths one device call takes
IN_CASE_BYTES = 2**20  # below this, a package of unknown version on the image is carried in case
# pip matches manylinux tags exactly: name every glibc level a wheel of these packages uses.
PLATFORMS = ["manylinux2014_x86_64", "manylinux1_x86_64"] + \
    [f"manylinux_2_{n}_x86_64" for n in (5, 12, 17, 24, 26, 27, 28, 31, 34, 35, 38, 39)]
# Top-level names some wheels ship that are not their module (and would shadow this repo's).
NOT_MODULES = {"tests", "test", "docs", "doc", "examples", "benchmarks", "scripts", "bin"}
# Run in a fresh interpreter per distribution: installed? accepted version? every module imports?
CHECK = r"""
import importlib, importlib.metadata as md, sys
dist, spec, modules = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    version = md.version(dist)
except md.PackageNotFoundError:
    sys.exit(3)
if spec:
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        from pip._vendor.packaging.specifiers import SpecifierSet
    if not SpecifierSet(spec).contains(version, prereleases=True):
        print(f"{dist} {version} is installed; needs {spec}", file=sys.stderr)
        sys.exit(4)
for module in modules:
    importlib.import_module(module)
"""
NOT_INSTALLED, WRONG_VERSION = 3, 4


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- fetch (a machine with PyPI) ---------------------------------------------------------------

def pyproject_pins() -> dict[str, str]:
    """This repository's requirement strings by distribution name (pyproject.toml)."""
    import tomllib

    from pip._vendor.packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {normalise(Requirement(d).name): d for d in deps}


def image_packages() -> dict[str, str | None]:
    """bench/gpu_image.txt: distribution -> version where known."""
    found: dict[str, str | None] = {}
    for line in IMAGE_PACKAGES.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[normalise(name)] = version or None
    return found


def wheel_modules(names: list[str]) -> list[str]:
    """Importable top-level modules from a wheel's file list (RECORD) or top_level.txt."""
    top = set()
    for name in names:
        first = name.split("/")[0]
        if first.endswith((".dist-info", ".data", ".pth")) or first == "__pycache__":
            continue
        if "/" in name or first.endswith(".py") or first.endswith(".so"):
            top.add(first.split(".")[0])
    return _public(top - NOT_MODULES)


def _public(modules: set[str]) -> list[str]:
    """pyyaml ships `yaml` and its C shim `_yaml`: check the public ones where there are any."""
    public = sorted(m for m in modules if not m.startswith("_"))
    return public or sorted(modules)


def read_wheel(path: Path) -> dict:
    with zipfile.ZipFile(path) as wheel:
        files = wheel.namelist()
        meta_name = next(f for f in files if f.endswith(".dist-info/METADATA") and f.count("/") == 1)
        meta = email.parser.Parser().parsestr(wheel.read(meta_name).decode())
        top_level = meta_name.replace("METADATA", "top_level.txt")
        listed = wheel.read(top_level).decode().split() if top_level in files else []
    modules = _public(set(listed) - NOT_MODULES) if listed else wheel_modules(files)
    return {"name": normalise(meta["Name"]), "version": meta["Version"], "modules": modules,
            "requires": meta.get_all("Requires-Dist") or [], "wheel": path.name, "bytes": path.stat().st_size}


def target_environment(python_version: str) -> dict[str, str]:
    return {"python_version": python_version, "python_full_version": python_version + ".0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def tree_bytes() -> int | None:
    """What a device call sends of this repository: tracked and untracked-not-ignored files."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = {REPO / p for p in listed.decode().split("\0") if p}
    return sum(p.stat().st_size for p in paths if p.is_file())


def fetch(args: argparse.Namespace) -> int:
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.version import Version

    pins = pyproject_pins()
    wanted = [pins[name] for name in BENCH_NEEDS]
    dest = Path(args.dest)
    image = image_packages() if args.target == "image" else {}
    with tempfile.TemporaryDirectory() as tmp:
        # Resolved against the image's own versions where known, so the closure holds what
        # *its* huggingface-hub needs, say, not what the newest release would.
        constraints = Path(tmp) / "image-constraints.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in image.items() if version))
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--only-binary=:all:", "--python-version", args.python_version, "--implementation", "cp",
                   *[f"--platform={p}" for p in PLATFORMS], "--constraint", str(constraints), "--dest", tmp,
                   *wanted]
        print("$ " + " ".join(command[:4]) + " ... " + " ".join(wanted), flush=True)
        if subprocess.run(command).returncode != 0:
            print("gpu_wheels: pip could not resolve the wheels (above)", file=sys.stderr)
            return 1
        wheels = {w["name"]: w for w in map(read_wheel, sorted(Path(tmp).glob("*.whl")))}
        if "torch" in wheels:
            print("gpu_wheels: the closure pulled in torch; the benchmark runs on the target's own", file=sys.stderr)
            return 1

        # who needs what, for the target Python
        needs: dict[str, list[str]] = {name: [f"framecast: {pins[name]}"] for name in BENCH_NEEDS}
        environment = target_environment(args.python_version)
        for wheel in wheels.values():
            for text in wheel["requires"]:
                req = Requirement(text)
                if normalise(req.name) in wheels and (req.marker is None or req.marker.evaluate(environment)):
                    needs.setdefault(normalise(req.name), []).append(f"{wheel['name']}: {req}")
        entries = []
        for name, wheel in sorted(wheels.items()):
            specs = [Requirement(n.split(": ", 1)[1]).specifier for n in needs.get(name, [])]
            present = name in image
            version = image.get(name)
            accepted = version is None or all(s.contains(Version(version), prereleases=True) for s in specs)
            # The image's version of a small package a requirement bounds is not known: carry
            # it in case (it is installed only if the image's fails its check).
            in_case = present and version is None and any(str(s) for s in specs) and wheel["bytes"] < IN_CASE_BYTES
            carried = not (present and accepted) or in_case
            entries.append({"name": name, "version": wheel["version"], "modules": wheel["modules"],
                            "specifier": str(SpecifierSet(",".join(str(s) for s in specs if str(s)))),
                            "needed_by": sorted(n.split(":")[0] for n in needs.get(name, [])),
                            "image_version": version if present else None,
                            "wheel": wheel["wheel"] if carried else None, "bytes": wheel["bytes"] if carried else 0})
        dest.mkdir(parents=True, exist_ok=True)
        for old in [*dest.glob("*.whl"), dest / MANIFEST]:  # one version of each: two stop the install
            old.unlink(missing_ok=True)
        for entry in entries:
            if entry["wheel"]:
                shutil.copy2(Path(tmp) / entry["wheel"], dest / entry["wheel"])
    manifest = {"python_version": args.python_version, "for": args.target, "requirements": entries}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

    carried = [e for e in entries if e["wheel"]]
    wheel_mib = sum(e["bytes"] for e in carried) / 2**20
    where = "the lent GPU image" if args.target == "image" else "a Python with torch alone"
    print(f"{dest}/: {len(carried)} wheels ({wheel_mib:.1f} MiB) for {where}, CPython {args.python_version}:")
    image = image_packages()
    for e in carried:
        if e["image_version"]:
            why = f"image has {e['image_version']}, needs {e['specifier']}"
        elif e["name"] in image and args.target == "image":
            why = f"image's version unknown; needs {e['specifier']}; installed only if the image's fails"
        else:
            why = "missing there"
        print(f"  {e['name']:<22}{e['version']:<12}{e['bytes'] / 2**20:>6.1f} MiB  ({why})")
    kept = [f"{e['name']} {e['image_version'] or ''}".strip() for e in entries if not e["wheel"]]
    if kept:
        print(f"  not carried, the image has them: {', '.join(kept)}")
    tree = tree_bytes()
    if tree is None:
        print(f"(not a git checkout: only the wheels counted) {wheel_mib:.1f} MiB of {CARRY_LIMIT_MIB} MiB")
        return 0 if wheel_mib <= CARRY_LIMIT_MIB else 1
    inside = dest.resolve().is_relative_to(REPO) and not _ignored(dest)
    total = tree / 2**20 + (0 if inside else wheel_mib)  # a wheel folder git sees is in the tree already
    print(f"working tree {tree / 2**20:.1f} MiB + wheels {wheel_mib:.1f} MiB = {total:.1f} MiB "
          f"of the {CARRY_LIMIT_MIB} MiB one device call carries")
    if total > CARRY_LIMIT_MIB:
        print(f"gpu_wheels: {total:.1f} MiB is over the {CARRY_LIMIT_MIB} MiB a call carries", file=sys.stderr)
        return 1
    return 0


def _ignored(path: Path) -> bool:
    proc = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO)
    return proc.returncode == 0


# --- install (the GPU machine; standard library only) -----------------------------------------

def read_manifest(wheels: Path) -> dict:
    """The fetched manifest, else the benchmark's own needs (nothing carried)."""
    path = wheels / MANIFEST
    if path.is_file():
        return json.loads(path.read_text())
    return {"python_version": None, "for": None, "requirements": [
        {"name": name, "version": None, "modules": [name], "specifier": "", "needed_by": ["framecast"],
         "image_version": None, "wheel": None} for name in BENCH_NEEDS]}


def check(python: str, entry: dict, pythonpath: str, workdir: str) -> tuple[int, str]:
    """(exit code of the check interpreter, its last stderr line)."""
    proc = subprocess.run([python, "-c", CHECK, entry["name"], entry.get("specifier") or "", *entry["modules"]],
                          env={**os.environ, "PYTHONPATH": pythonpath}, cwd=workdir, capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


def check_all(python: str, entries: list[dict], pythonpath: str) -> dict[str, tuple[int, str]]:
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        results = pool.map(lambda e: check(python, e, pythonpath, workdir), entries)
        return {e["name"]: r for e, r in zip(entries, results)}


def describe_failure(entry: dict, code: int, message: str) -> str:
    need = f"{entry['name']}{entry.get('specifier') or ''}"
    by = ", ".join(entry.get("needed_by") or [])
    carried = bool(entry.get("wheel"))
    if code == NOT_INSTALLED:
        what = "not installed; " + ("its carried wheel did not install" if carried else "no wheel carried")
    elif code == WRONG_VERSION:
        what = message + ("; the carried wheel did not replace it" if carried else "; no wheel carried")
    else:
        what = ("installed from its carried wheel, " if carried else "") + f"but the import fails: {message}"
    return f"  {need:<34} (needed by {by}): {what}"


def install(args: argparse.Namespace) -> int:
    python, wheels, target = args.python, Path(args.wheels), Path(args.target)
    manifest = read_manifest(wheels)
    entries = manifest["requirements"]
    pythonpath = os.pathsep.join([str(target), *filter(None, [os.environ.get("PYTHONPATH")])])
    torch_check = check(python, {"name": "torch", "modules": ["torch"]}, pythonpath, tempfile.gettempdir())
    if torch_check[0] != 0:
        print(f"bench/gpu.sh: torch does not import with {python}: {torch_check[1] or 'not installed'}; "
              "the benchmark runs on the image's torch, which is never carried", file=sys.stderr)
        return 2

    first = check_all(python, entries, pythonpath)
    to_install = [e for e in entries if first[e["name"]][0] != 0 and e.get("wheel")]
    running = ".".join(map(str, sys.version_info[:2]))
    if to_install and manifest["python_version"] not in (None, running):
        print(f"bench/gpu.sh: the wheels in {wheels}/ were fetched for Python {manifest['python_version']}; "
              f"this is Python {running}: bench/gpu.sh --fetch-wheels --python-version {running}", file=sys.stderr)
        return 2
    if to_install:
        target.mkdir(parents=True, exist_ok=True)
        command = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                   "--no-deps", "--no-compile", "--upgrade", "--target", str(target),
                   *[str(wheels / e["wheel"]) for e in to_install]]
        if subprocess.run(command).returncode != 0:
            print(f"bench/gpu.sh: pip could not install the carried wheels (above) into {target}", file=sys.stderr)
            return 2
    second = check_all(python, entries, pythonpath) if to_install else first
    failed = [e for e in entries if second[e["name"]][0] != 0]
    if failed:
        print(f"bench/gpu.sh: {len(failed)} of the {len(entries)} packages the benchmark needs are missing here "
              f"({python}, Python {running}):", file=sys.stderr)
        for e in failed:
            print(describe_failure(e, *second[e["name"]]), file=sys.stderr)
        kind = {"image": "the lent GPU image", "bare": "a Python with torch alone"}.get(manifest["for"], "")
        print(f"  the wheels in {wheels}/ were fetched for {kind or 'nothing (no manifest)'}; on a machine with "
              f"PyPI run: bench/gpu.sh --fetch-wheels --python-version {running} "
              f"--for {'bare' if manifest['for'] == 'image' else 'image|bare'}, and carry {wheels}/", file=sys.stderr)
        return 2
    names = ", ".join(e["name"] for e in to_install) or "nothing"
    print(f"bench/gpu.sh: {len(entries)} packages import; installed from {wheels}/ into {target}: {names}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download the wheels the target lacks (needs PyPI)")
    f.add_argument("--dest", default=".whl", help="wheel folder to (re)fill (default .whl)")
    f.add_argument("--python-version", default="3.12", help="the target's CPython, major.minor (default 3.12, "
                                                            "the lent GPU image's)")
    f.add_argument("--for", dest="target", choices=("image", "bare"), default="image",
                   help="image: carry what the lent GPU image lacks (bench/gpu_image.txt); bare: everything "
                        "beyond torch")
    i = sub.add_parser("install", help="check every needed module and install the missing ones (no network)")
    i.add_argument("--wheels", default=".whl", help="the fetched wheel folder (default .whl)")
    i.add_argument("--target", required=True, help="folder the missing packages go to (put it on PYTHONPATH)")
    i.add_argument("--python", default=sys.executable, help="the interpreter that will run the benchmark")
    args = ap.parse_args()
    return fetch(args) if args.command == "fetch" else install(args)


if __name__ == "__main__":
    sys.exit(main())
