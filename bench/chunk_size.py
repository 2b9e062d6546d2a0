"""What smaller chunks cost: frames/s of the default model at 3, 2 and 1 latent frames per
chunk, side by side, and what each gives a prompt switch.

A switch shows where the last chunk sent ends, so the chunk's length bounds the wait a
viewer sees after the lead (docs/architecture.md). Fewer latent frames per chunk shorten
that bound, and each chunk still pays its fixed costs (the steps' forwards over the whole
cache, the refresh pass, the decoder call), so frames/s fall. The student was trained with
its own chunk size: the other sizes are measured for speed only.

    python bench/chunk_size.py                     # the default model, its own backend
    python bench/chunk_size.py --backend eager --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model name or dir (default: the embedded default)")
    ap.add_argument("--backend", default=None, help="runtime backend (default: the model's)")
    ap.add_argument("--sizes", default="3,2,1", help="latent frames per chunk")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is printed)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds of video timed per round")
    ap.add_argument("--lead", type=float, default=0.35, help="the server's stream_lead_s, for the switch bound")
    args = ap.parse_args()

    import torch

    from engine import load_model
    from engine.model import StreamModel
    from engine.runtime.build import RuntimeOptions, attach_runtime

    base = load_model(args.model, backend="eager")
    worker = ThreadPoolExecutor(max_workers=1)  # as the server runs the model: off the main thread
    models = {}
    for size in (int(s) for s in args.sizes.split(",")):
        attention = base.config.attention.model_copy(update={"chunk_frames": size})
        config = base.config.model_copy(update={"attention": attention})
        model = StreamModel(config, base.transformer, base.text_encoder, base.decoder, base.model_dir)
        models[size] = attach_runtime(model, RuntimeOptions(args.backend or base.config.runtime, None))

    def fps(model) -> float:
        session = model.open_session("a red ball bouncing on a blue background", seed=0)
        for _ in range(12 // model.config.attention.chunk_frames + 1):  # fill the window
            session.next_chunk()
        frames, started = 0, time.perf_counter()
        while frames < args.seconds * model.fps:
            frames += len(session.next_chunk().frames)
        return frames / (time.perf_counter() - started)

    runs = {size: [] for size in models}
    for _ in range(args.rounds):
        for size, model in models.items():
            runs[size].append(worker.submit(fps, model).result())
    first = next(iter(models))
    print(f"\n{base.name}, backend {models[first].step_fn.backend}, torch threads {torch.get_num_threads()}, "
          f"{args.rounds} interleaved rounds of {args.seconds:g} s\n")
    print("| latent frames per chunk | video frames per chunk | fps (median) | x the first | real-time factor "
          "| switch shows within (lead + chunk) |")
    print("| --- | --- | --- | --- | --- | --- |")
    reference = statistics.median(runs[first])
    for size, model in models.items():
        median = statistics.median(runs[size])
        chunk_s = model.frames_per_chunk / model.fps
        print(f"| {size} | {model.frames_per_chunk} | {median:.1f} ({min(runs[size]):.1f}-{max(runs[size]):.1f}) "
              f"| {median / reference:.2f} | {median / model.fps:.1f} | {args.lead + chunk_s:.2f} s |")
    worker.shutdown()


if __name__ == "__main__":
    main()
