"""Tell two models apart: the paired difference of every evaluator metric between two
report.json files scored on the same prompts and seeds (`framecast eval --out`, or the
per-row report.json that bench/distill_eval.py writes), mean [95 % bootstrap interval] of
after minus before over the (prompt, seed) pairs. An interval that excludes 0 is a
difference the prompt set and seeds can see; the side-by-side intervals of each report
alone overlap far more often.

    .venv/bin/python bench/compare_reports.py runs/eval-old/report.json runs/eval-new/report.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distill.eval.report import paired_difference

COLUMNS = ("prompt_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy", "count_accuracy",
           "contrast_accuracy", "all_correct", "smoothness")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", help="report.json of the model compared against")
    p.add_argument("after", help="report.json of the model compared")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    try:
        reports = [json.loads(Path(f).read_text()) for f in (args.before, args.after)]
        diff = paired_difference(*reports, metrics=COLUMNS)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"compare_reports: cannot compare {args.before} and {args.after}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(diff, indent=2))
        return 0
    print(f"after ({args.after}) minus before ({args.before}), paired over (prompt, seed); "
          f"mean [95 % bootstrap interval]")
    for m, d in diff.items():
        lo, hi = d["interval"] or (float("nan"), float("nan"))
        seen = "  differs" if lo > 0 or hi < 0 else ""
        print(f"  {m:<18} {d['before']:.3f} -> {d['after']:.3f}   {d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
              f"  ({d['samples']} pairs){seen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
