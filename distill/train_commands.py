"""`framecast distill teacher|student|autoencoder`: training commands with presets,
`--dry-run`, progress bars, TensorBoard logs and resume by re-running the same command.
Registration is light: torch loads inside the handlers."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def _common(p: argparse.ArgumentParser, default_run_dir: str) -> None:
    p.add_argument("--preset", default="shapes", help="preset from the table in the module (shapes, tiny)")
    p.add_argument("--run-dir", default=default_run_dir,
                   help="checkpoints, TensorBoard logs and run.json; re-running with the same dir resumes")
    p.add_argument("--out", default=None, help="model directory to write at the end (default: RUN_DIR/model)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the preset (JSON value), e.g. --set steps=200 --set lr=1e-4")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def register(sub: argparse._SubParsersAction) -> None:
    distill = sub.add_parser("distill", help="offline training: teacher, student, autoencoder")
    dsub = distill.add_subparsers(dest="stage", metavar="STAGE")
    teacher = dsub.add_parser("teacher", help="train the bidirectional teacher by flow matching on Shapes")
    _common(teacher, "runs/teacher")
    teacher.add_argument("--autoencoder", default=None, help="autoencoder directory (overrides the preset's)")
    teacher.set_defaults(func=run_teacher)
    student = dsub.add_parser("student", help="distil the teacher into the causal few-step student")
    _common(student, "runs/student")
    student.add_argument("--teacher", default=None, help="teacher model directory (overrides the preset's)")
    student.set_defaults(func=run_student)
    ablate = dsub.add_parser("ablate", help="DMD, Re-DMD (+EMA sink), Stream-R1, each +diagonal: same budget, "
                                            "evaluated side by side; writes report.md, report.json, drift.png")
    _common(ablate, "runs/ablate")
    ablate.add_argument("--teacher", required=True, help="teacher model directory")
    ablate.add_argument("--variants", default="all", help="comma-separated subset of " + ", ".join(
        ["dmd", "re_dmd", "stream_r1", "dmd+diag", "re_dmd+diag", "stream_r1+diag"]))
    ablate.add_argument("--prompts", type=int, default=16, help="standard prompts evaluated per variant")
    ablate.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    ablate.add_argument("--seconds", type=float, default=1.5, help="clip length evaluated")
    ablate.add_argument("--drift-minutes", type=float, default=5.0, help="stream length for the drift column")
    ablate.set_defaults(func=run_ablate)
    default = dsub.add_parser(
        "default", help="reproduce the embedded default model: autoencoder, teacher, student, in one command")
    default.add_argument("--run-dir", default="runs/default",
                         help="one folder per stage inside; re-running resumes whichever stage is unfinished")
    default.add_argument("--out", default="engine/models/shapes-default", help="where the finished model goes")
    default.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    default.add_argument("--dry-run", action="store_true", help="print the three stages' configs and exit")
    default.set_defaults(func=run_default)
    from distill.rewards.train import add_subcommand as add_reward
    from distill.train_autoencoder import add_subcommand as add_autoencoder

    add_autoencoder(dsub)
    add_reward(dsub)  # framecast distill reward
    distill.set_defaults(func=lambda args: distill.print_help() or 2)


def resolve(presets: dict, args: argparse.Namespace, **paths):
    from clients.cli import CommandError

    if args.preset not in presets:
        raise CommandError(f"unknown preset {args.preset!r}; choose from {', '.join(presets)}")
    run = presets[args.preset]
    fields = {f.name for f in dataclasses.fields(run)}
    updates = {k: v for k, v in paths.items() if v is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in fields or key == "model":
            raise CommandError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                               f"{', '.join(sorted(fields - {'model'}))}")
        try:
            updates[key] = json.loads(value)
        except json.JSONDecodeError:
            updates[key] = value  # a bare string such as a path
    return dataclasses.replace(run, **updates)


def _print(run) -> None:
    data = dataclasses.asdict(run)
    if hasattr(run.model, "model_dump"):  # a pydantic ModelConfig; dataclass configs are already dicts
        data["model"] = run.model.model_dump(mode="json")
    print(json.dumps(data, indent=2, default=str))


def run_teacher(args: argparse.Namespace) -> int:
    from clients.cli import CommandError

    from .teacher import PRESETS, train_teacher

    run = resolve(PRESETS, args, autoencoder=args.autoencoder)
    if args.dry_run:
        _print(run)
        return 0
    if not (Path(run.autoencoder) / "autoencoder.json").is_file():
        raise CommandError(f"no autoencoder at {run.autoencoder}; train one with `framecast distill autoencoder` "
                           f"or pass --autoencoder DIR")
    out = train_teacher(run, Path(args.run_dir), Path(args.out) if args.out else None, args.threads)
    print(f"teacher written to {out}")
    return 0


def run_student(args: argparse.Namespace) -> int:
    from clients.cli import CommandError

    from .student import PRESETS, train_student

    run = resolve(PRESETS, args, teacher=args.teacher)
    if args.dry_run:
        _print(run)
        return 0
    if not (Path(run.teacher) / "model.json").is_file():
        raise CommandError(f"no teacher at {run.teacher}; train one with `framecast distill teacher` or pass --teacher")
    out = train_student(run, Path(args.run_dir), Path(args.out) if args.out else None, args.threads)
    if out is not None:
        print(f"student written to {out}")
    return 0


def run_default(args: argparse.Namespace) -> int:
    """Autoencoder (preset default) -> teacher (preset shapes) -> student (preset shapes)."""
    from distill.train_autoencoder import presets as autoencoder_presets, train as train_autoencoder

    from .student import PRESETS as STUDENT, train_student
    from .teacher import PRESETS as TEACHER, train_teacher

    root = Path(args.run_dir)
    ae_run = autoencoder_presets()["default"]
    teacher_run = dataclasses.replace(TEACHER["shapes"], autoencoder=str(root / "autoencoder" / "autoencoder"))
    student_run = dataclasses.replace(STUDENT["shapes"], teacher=str(root / "teacher" / "model"))
    if args.dry_run:
        for run in (ae_run, teacher_run, student_run):
            _print(run)
        return 0
    train_autoencoder(ae_run, root / "autoencoder", threads=args.threads)
    train_teacher(teacher_run, root / "teacher", threads=args.threads)
    out = train_student(student_run, root / "student", Path(args.out), threads=args.threads)
    print(f"default model written to {out}")
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from clients.cli import CommandError

    from .ablate import VARIANTS, run_ablation
    from .student import PRESETS

    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise CommandError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    run = resolve(PRESETS, args, teacher=args.teacher)
    if args.dry_run:
        _print(run)
        print(json.dumps({"variants": variants}))
        return 0
    if not (Path(run.teacher) / "model.json").is_file():
        raise CommandError(f"no teacher at {run.teacher}")
    run_ablation(run, run.teacher, Path(args.run_dir), variants, args.prompts, args.seeds, args.seconds,
                 args.drift_minutes, args.threads)
    return 0
