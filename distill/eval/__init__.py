"""The Shapes evaluator: a procedural judge of generated video, not a learned model.

It finds objects by colour, measures their shape, size and motion and the background,
and compares them with what the prompt asks (parsed by engine.shapes.captions).

    from distill.eval import evaluate_frames, evaluate_generator, standard_prompts
    evaluate_frames(frames, "a red ball rolls to the left", fps=16)  # -> dict of metrics
    evaluate_generator(generate, standard_prompts(), seeds=2, seconds=4, out_dir="out")

See distill.eval.evaluate for the metrics and distill.eval.report for the files.
"""

from distill.eval.config import EvalConfig
from distill.eval.evaluate import METRICS, evaluate_frames, evaluate_video
from distill.eval.prompts import PROMPT_SETS, heldout_prompts, standard_prompts, standard_scenes
from distill.eval.report import evaluate_generator

__all__ = [
    "EvalConfig", "METRICS", "evaluate_frames", "evaluate_generator", "evaluate_video",
    "standard_prompts", "standard_scenes", "heldout_prompts", "PROMPT_SETS",
]
