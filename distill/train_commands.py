"""`framecast distill autoencoder|teacher|student|reward|ablate|default`: the training
commands, one convention for every stage.

Each stage's module holds a frozen run dataclass (with its model's typed config), a
`PRESETS` table, and one `train_<stage>(run, run_dir, out_dir, threads, progress) ->
TrainResult` loop; this module is their command line: `--preset`, `--set FIELD=VALUE`
overrides (dotted into the model config: `--set model.transformer.num_layers=6`),
`--dry-run`, `--run-dir` (re-running the same command resumes), `--out`, `--threads`.
Registration is light: a stage's module (and torch) loads in its handler.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import sys
import types
import typing
from pathlib import Path

from framecast import CommandError

# stage -> (module, trainer, default run dir, help)
STAGES: dict[str, tuple[str, str, str, str]] = {
    "autoencoder": ("distill.train_autoencoder", "train_autoencoder", "runs/autoencoder",
                    "train the default model's video autoencoder on the Shapes world or a folder of videos"),
    "teacher": ("distill.teacher", "train_teacher", "runs/teacher",
                "train the bidirectional teacher by flow matching on Shapes latents or a folder of videos"),
    "student": ("distill.student", "train_student", "runs/student",
                "distil a teacher into the causal few-step student (ODE init, then DMD); under torchrun "
                "every network is sharded with FSDP2"),
    "reward": ("distill.rewards.train", "train_reward", "runs/reward",
               "train (or --evaluate) the Shapes video reward model: visual, motion, text scores"),
}
# What `framecast distill default` chains: (stage, preset, run dir under RUN_DIR). A teacher
# preset in the dir before it carries that run on (it resumes there); one in a dir of its own
# starts from the weights the teacher before it made (init_from). The student distils the last.
DEFAULT_CHAIN = (("autoencoder", "shapes", "autoencoder"), ("teacher", "shapes-wide", "teacher"),
                 ("teacher", "shapes-wide-carry", "teacher"), ("teacher", "shapes-wide-carry-on", "teacher-on"),
                 ("student", "shapes", "student"))


def _common(p: argparse.ArgumentParser, default_run_dir: str) -> None:
    p.add_argument("--preset", default="shapes",
                   help="preset from the stage's PRESETS table (shapes, tiny; the student also has wan)")
    p.add_argument("--run-dir", type=Path, default=Path(default_run_dir),
                   help="checkpoints, TensorBoard logs, metrics.jsonl and run.json; re-running with the same "
                        "dir resumes")
    p.add_argument("--out", type=Path, default=None, help="where the trained model goes (default: inside RUN_DIR)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of the preset, e.g. --set steps=200 --set lr=1e-4 or "
                        "--set model.latent_channels=32 (JSON values; plain text for text fields)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics/TensorBoard)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved run config as JSON and exit")


def _leaving_process_group(handler):
    """`handler`, then out of the torchrun process group if the handler joined one (a caller
    that joined it before, like a test running several commands in one group, keeps it)."""
    def joined() -> bool:  # without loading torch: registration and --help stay light
        dist = sys.modules.get("torch.distributed")
        return dist is not None and dist.is_available() and dist.is_initialized()

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        owner, done = not joined(), False
        try:
            code = handler(args)
            done = True
            return code
        finally:
            if owner and joined():
                from .parallel import leave_process_group

                leave_process_group(wait=done)
                if done and os.environ.get("TORCHELASTIC_RUN_ID"):  # a torchrun worker, its work written:
                    end_worker(code)  # end it without C++ destructors (never a caller's own process)
    return run


def end_worker(code: int) -> None:
    """Exit a torchrun worker at once, its output flushed. Even after the group is destroyed, a
    gloo worker thread can still be joinable when the interpreter tears down, and its destructor
    then aborts the process ("terminate called without an active exception", SIGABRT) after
    its work is done, failing the whole torchrun (seen in CI). Every file the
    command writes is closed before it returns, so skipping the teardown loses nothing."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


def register(sub: argparse._SubParsersAction) -> None:
    distill = sub.add_parser("distill", help="offline training: autoencoder, teacher, student, reward, ablation")
    dsub = distill.add_subparsers(dest="stage", metavar="STAGE")
    for stage, (_, _, run_dir, text) in STAGES.items():
        parser = dsub.add_parser(stage, help=text, description=text)
        _common(parser, run_dir)
        parser.set_defaults(func=_leaving_process_group(run_stage))
        if stage in ("autoencoder", "teacher"):
            parser.add_argument("--data", default=None, metavar="DIR",
                                help="train on your own videos: DIR holds them and a captions.jsonl "
                                     '({"file": ..., "caption": ...} per line); default: the Shapes world')
        if stage == "teacher":
            parser.add_argument("--autoencoder", default=None, help="autoencoder directory (overrides the preset's)")
        if stage == "student":
            parser.add_argument("--teacher", default=None,
                                help="teacher model directory: any model the engine loads (a Shapes teacher, a "
                                     "converted Wan2.1); the student's architecture, chunking and step schedule "
                                     "follow it")
            parser.add_argument("--prompts", default=None, metavar="FILE",
                                help="prompt file: one prompt per line, or JSONL with a \"prompt\" or \"text\" "
                                     "field (default: Shapes captions)")
        if stage == "reward":
            parser.add_argument("--evaluate", type=Path, default=None, metavar="DIR",
                                help="do not train: print the held-out pairwise accuracies of the reward model in DIR")
            parser.add_argument("--eval-clips", type=int, default=64,
                                help="with --evaluate: held-out clips to judge (each against every negative kind)")
    ablate = dsub.add_parser("ablate", help="DMD, Re-DMD (+EMA sink), Stream-R1, each +diagonal: same budget, "
                                            "evaluated side by side; writes report.md, report.json, drift.png")
    _common(ablate, "runs/ablate")
    ablate.add_argument("--teacher", required=True,
                        help="teacher model directory (any model the engine loads; the students follow it)")
    ablate.add_argument("--train-prompts", default=None, metavar="FILE",
                        help="prompt file the variants train on (one per line, or JSONL); default: Shapes captions")
    ablate.add_argument("--variants", default="all", help="comma-separated subset of " + ", ".join(
        ["dmd", "re_dmd", "stream_r1", "dmd+diag", "re_dmd+diag", "stream_r1+diag"]))
    ablate.add_argument("--prompts", type=int, default=16, help="standard prompts evaluated per variant")
    ablate.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    ablate.add_argument("--seconds", type=float, default=1.5, help="clip length evaluated")
    ablate.add_argument("--drift-minutes", type=float, default=5.0, help="stream length for the drift column")
    ablate.set_defaults(func=_leaving_process_group(run_ablate))
    default = dsub.add_parser(
        "default", help="reproduce the embedded default model: autoencoder, teacher, student, in one command")
    default.add_argument("--run-dir", type=Path, default=Path("runs/default"),
                         help="one folder per stage inside; re-running resumes whichever stage is unfinished")
    default.add_argument("--out", type=Path, default=Path("engine/models/shapes-default"),
                         help="where the finished model goes")
    default.add_argument("--autoencoder", type=Path, default=None, metavar="DIR",
                         help="start from this trained autoencoder (a folder with autoencoder.json, e.g. "
                              "engine/models/shapes-default) instead of training one: skips the first stage")
    default.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    default.add_argument("--no-progress", action="store_true", help="no progress bars")
    default.add_argument("--dry-run", action="store_true", help="print every stage's config and exit")
    default.set_defaults(func=_leaving_process_group(run_default))
    distill.set_defaults(func=lambda args: distill.print_help() or 2)


# --- resolving a run config ------------------------------------------------------------------

def _parse_value(item: str, value: str, kind) -> object:
    """JSON, except that a text field also takes plain text (a path, a method name)."""
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        if kind is str or typing.get_origin(kind) in (typing.Union, types.UnionType) and str in typing.get_args(kind):
            return value
        if typing.get_origin(kind) is typing.Literal:  # a choice of words: model.attention.text_padding=mask
            if value in typing.get_args(kind):
                return value
            raise CommandError(f"--set {item!r}: one of {', '.join(map(str, typing.get_args(kind)))}") from None
        raise CommandError(f"--set {item!r}: VALUE must be JSON for this field ({exc})") from None


def _model_update(model, path: list[str], item: str, value: str):
    """The model config with `path` (dotted field names inside it) set, validated again."""
    head, rest = path[0], path[1:]
    fields = type(model).model_fields
    if head not in fields:
        raise CommandError(f"--set {item!r}: the model config has no field {head!r}; "
                           f"fields: {', '.join(sorted(fields))}")
    if rest:
        new = _model_update(getattr(model, head), rest, item, value)
    else:
        new = _parse_value(item, value, fields[head].annotation)
    try:
        return model.updated(**{head: new})
    except ValueError as exc:
        raise CommandError(f"--set {item!r}: {exc}".replace("\n", " ")) from None


def resolve(presets: dict, preset: str, sets: list[str], model_for=None, **paths):
    """The preset's run with the non-None `paths` and `sets` applied. `model_for(run)`, when
    given, replaces the preset's model before the `--set model.*` overrides (the student's
    model follows its teacher)."""
    if preset not in presets:
        raise CommandError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
    run = presets[preset]
    fields = {f.name: f for f in dataclasses.fields(run)}
    hints = typing.get_type_hints(type(run))
    updates = {k: v for k, v in paths.items() if v is not None}
    model_sets = []
    for item in sets:
        key, sep, value = item.partition("=")
        name, *path = key.split(".")
        if not sep or name not in fields or (path and name != "model") or (name == "model" and not path):
            raise CommandError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                               f"{', '.join(sorted(set(fields) - {'model'}))} or model.<field>")
        if name == "model":
            model_sets.append((path, item, value))
        else:
            updates[name] = _parse_value(item, value, hints[name])
            if typing.get_origin(hints[name]) is typing.Literal and updates[name] not in typing.get_args(hints[name]):
                raise CommandError(f"--set {item!r}: one of {', '.join(map(str, typing.get_args(hints[name])))}")
    run = dataclasses.replace(run, **updates)
    model = model_for(run) if model_for is not None else run.model
    for path, item, value in model_sets:
        model = _model_update(model, path, item, value)
    return dataclasses.replace(run, model=model)


def student_model_for(run):
    """The student of the run's teacher (distill.student.student_config), once the teacher
    exists; until then (a dry run before training one) the preset's model."""
    from distill.student import for_teacher

    if not (Path(run.teacher) / "model.json").is_file():
        return run.model
    try:
        return for_teacher(run).model
    except ValueError as exc:  # an unreadable model.json
        raise CommandError(f"--teacher {run.teacher}: {exc}".replace("\n", " ")) from None


def _print(run, **extra) -> None:
    from distill.common import run_to_json

    print(json.dumps({**{k: str(v) for k, v in extra.items()}, **run_to_json(run)}, indent=2))


# --- handlers --------------------------------------------------------------------------------

def _stage(stage: str):
    module_name, trainer, _, _ = STAGES[stage]
    module = importlib.import_module(module_name)
    return module.PRESETS, getattr(module, trainer)


def _check_inputs(stage: str, run) -> None:
    if stage == "teacher" and not (Path(run.autoencoder) / "autoencoder.json").is_file():
        raise CommandError(f"no autoencoder at {run.autoencoder}; train one with `framecast distill autoencoder` "
                           "or pass --autoencoder DIR")
    if stage == "teacher" and (run.image_batch < 0 or run.batch_size < 0 or run.image_batch + run.batch_size == 0):
        raise CommandError("batch_size (clips a step) and image_batch (single frames a step) must be >= 0, "
                           "and not both 0")
    if stage == "teacher" and (run.image_batch or not run.batch_size) and run.pool_size <= 0:
        raise CommandError("image_batch draws single frames from the clip pool: set pool_size > 0 too")
    if stage == "teacher" and not (0 <= run.blur_inputs <= 1 and run.blur_sigma > 0):
        raise CommandError(f"blur_inputs is a share of the batch, in [0, 1] (got {run.blur_inputs}), and "
                           f"blur_sigma a width in latent pixels, > 0 (got {run.blur_sigma})")
    if stage == "teacher" and run.shape_labels and (run.shape_labels < 0 or run.data is not None or run.pool_size <= 0):
        raise CommandError("shape_labels (a weight >= 0) learns from the Shapes world's scenes: it needs the "
                           "Shapes world (no --data) and a clip pool (pool_size > 0)")
    if stage == "teacher" and run.shape_critic and (run.shape_critic < 0 or run.data is not None or run.pool_size <= 0
                                                   or not 0 < run.shape_critic_sigma <= 1):
        raise CommandError("shape_critic (a weight >= 0) learns from the Shapes world's scenes: it needs the "
                           "Shapes world (no --data), a clip pool (pool_size > 0) and shape_critic_sigma in (0, 1]")
    if stage == "teacher":
        from engine.shapes.scene import LAYOUTS, ORBITS

        if run.layout not in LAYOUTS or run.max_start_frame < 0 or run.orbit not in ORBITS:
            raise CommandError(f"layout is one of {', '.join(LAYOUTS)} (got {run.layout!r}), orbit one of "
                               f"{', '.join(ORBITS)} (got {run.orbit!r}) and max_start_frame a frame >= 0 "
                               f"(got {run.max_start_frame})")
        if run.data is not None and (run.layout, run.max_start_frame, run.orbit) != ("random", 480, "either"):
            raise CommandError("layout, orbit and max_start_frame say how the Shapes world's clips are drawn: "
                               "they do not apply to --data")
    if stage == "teacher" and not 0 <= run.shape_layer <= run.model.transformer.num_layers:
        raise CommandError(f"shape_layer {run.shape_layer} is not a block of this "
                           f"{run.model.transformer.num_layers}-block model (0: half the blocks)")
    if stage == "teacher" and run.init_from is not None and not (Path(run.init_from) / "transformer.safetensors").is_file():
        raise CommandError(f"no teacher to start from at {run.init_from} (init_from): a model dir with "
                           "transformer.safetensors, e.g. a teacher run's RUN_DIR/model")
    if stage == "student" and not (Path(run.teacher) / "model.json").is_file():
        raise CommandError(f"no teacher at {run.teacher}; train one with `framecast distill teacher` or pass --teacher")
    if stage == "student" and run.init_from is not None and not (Path(run.init_from) / "model.json").is_file():
        raise CommandError(f"no student to start from at {run.init_from} (init_from): train one with "
                           "`framecast distill student` or pass --set init_from=DIR")
    if getattr(run, "prompts", None) is not None and not Path(run.prompts).is_file():
        raise CommandError(f"no prompt file at {run.prompts}")
    if getattr(run, "data", None) is not None and not (Path(run.data) / "captions.jsonl").is_file():
        raise CommandError(f"no captions.jsonl in {run.data} (--data DIR: your videos and their captions)")
    if stage == "student":
        from distill.student import gan_refusal, served_model

        if (refused := gan_refusal(run, int(os.environ.get("WORLD_SIZE", "1")))) is not None:
            raise CommandError(refused)
        try:
            served_model(run)
        except ValueError as exc:  # pydantic's ValidationError is one
            raise CommandError(f"serve_chunk_frames / serve_refresh_context: {exc}".replace("\n", " ")) from None


def _report(stage: str, result) -> None:
    figures = "".join(f", {k} {v:.3f}" for k, v in result.figures.items() if "/" not in k)
    where = f"; written to {result.out_dir}" if result.out_dir is not None else ""
    print(f"{stage}: step {result.step} in {result.seconds:.0f} s{figures}{where}")


def run_stage(args: argparse.Namespace) -> int:
    presets, train = _stage(args.stage)
    paths = {k: getattr(args, k) for k in ("autoencoder", "teacher", "prompts", "data") if hasattr(args, k)}
    run = resolve(presets, args.preset, args.set, model_for=student_model_for if args.stage == "student" else None,
                  **paths)
    if args.stage == "reward" and args.evaluate is not None:
        return evaluate_reward(args, run)
    if args.dry_run:
        _print(run, run_dir=args.run_dir, out=args.out or "inside the run dir", threads=args.threads)
        return 0
    from engine.errors import CheckpointError

    _check_inputs(args.stage, run)
    try:
        result = train(run, args.run_dir, args.out, args.threads, not args.no_progress)
    except CheckpointError as exc:  # weights that do not fit (init_from, --teacher): the user's files
        raise CommandError(str(exc)) from None
    _report(args.stage, result)
    return 0


def evaluate_reward(args: argparse.Namespace, run) -> int:
    import torch

    from distill.rewards.shapes import ShapesVideoReward
    from distill.rewards.train import heldout_accuracy

    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.evaluate / "reward.json").is_file():
        raise CommandError(f"no reward model in {args.evaluate} (reward.json missing)")
    model = ShapesVideoReward.load(args.evaluate)
    accuracy = heldout_accuracy(model, dataclasses.replace(run, model=model.config), args.eval_clips)
    print(f"held-out pairwise accuracy over {args.eval_clips} clips (real above negative):")
    for dim in ("visual", "motion", "text"):
        kinds = ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in accuracy.items() if k.startswith(dim + "/"))
        print(f"  {dim:<6} {accuracy.get(dim, float('nan')):.3f}  ({kinds})")
    return 0


def run_default(args: argparse.Namespace) -> int:
    """DEFAULT_CHAIN's stages with their presets, each into its run dir under RUN_DIR
    (autoencoder -> teacher, carried on in its dir, then once more from its weights -> student);
    with --autoencoder, the teacher stages read that one and no autoencoder is trained."""
    root = args.run_dir
    autoencoder = args.autoencoder or root / "autoencoder" / "autoencoder"
    if args.autoencoder is not None and not (args.autoencoder / "autoencoder.json").is_file():
        raise CommandError(f"--autoencoder {args.autoencoder}: no autoencoder.json there (a trained autoencoder "
                           "folder, e.g. engine/models/shapes-default or RUN_DIR/autoencoder/autoencoder)")
    runs, teacher = [], None  # teacher: the dir of the last teacher stage's run
    for stage, preset, name in DEFAULT_CHAIN:
        if stage == "autoencoder" and args.autoencoder is not None:
            continue
        run, run_dir = _stage(stage)[0][preset], root / name
        if stage == "teacher":
            run = dataclasses.replace(run, autoencoder=str(autoencoder))
            if teacher is not None and teacher != run_dir:
                run = dataclasses.replace(run, init_from=str(teacher / "model"))
            teacher = run_dir
        elif stage == "student":
            run = dataclasses.replace(run, teacher=str(teacher / "model"))
        runs.append((stage, preset, run, run_dir))
    if args.dry_run:
        for stage, preset, run, run_dir in runs:
            _print(run, stage=stage, preset=preset, run_dir=run_dir)
        return 0
    for i, (stage, _, run, run_dir) in enumerate(runs):
        out = args.out if i == len(runs) - 1 else None
        result = _stage(stage)[1](run, run_dir, out, args.threads, not args.no_progress)
        _report(stage, result)
    print(f"default model written to {args.out}")
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from .ablate import VARIANTS, run_ablation

    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise CommandError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    run = resolve(_stage("student")[0], args.preset, args.set, model_for=student_model_for, teacher=args.teacher,
                  prompts=args.train_prompts)
    if args.dry_run:
        _print(run, variants=",".join(variants))
        return 0
    _check_inputs("student", run)
    run_ablation(run, run.teacher, args.run_dir, variants, args.prompts, args.seeds, args.seconds,
                 args.drift_minutes, args.threads, not args.no_progress)
    return 0
