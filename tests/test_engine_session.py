"""StreamSession behaviour: determinism, prompt switches, step schedules, bad input."""

import time

import numpy as np
import pytest
import torch

from engine import (CheckpointError, InvalidConfig, InvalidPrompt, InvalidSeed, ModelNotFound, ShapeMismatch,
                    load_model, save_model)
from engine.config import build_config
from engine.model import StreamModel
from engine.sampler import FewStepSampler, shift_sigma, step_timesteps
from engine.scheduler import BatchScheduler
from tests.engine_helpers import tiny_model


def frames_of(session, n):
    return [session.next_chunk() for _ in range(n)]


def test_same_seed_same_frames_and_different_seed_differs():
    model = load_model("tiny-random")
    a = frames_of(model.open_session("a red ball", seed=7), 3)
    b = frames_of(model.open_session("a red ball", seed=7), 3)
    c = frames_of(model.open_session("a red ball", seed=8), 3)
    assert a[0].frames.shape == (model.frames_per_chunk, model.height, model.width, 3)
    assert a[0].frames.dtype == np.uint8
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(a, b))
    assert not np.array_equal(a[2].frames, c[2].frames)
    assert [x.pts for x in a] == [i * model.frames_per_chunk / model.fps for i in range(3)]


def test_prompt_switch_changes_frames_only_from_the_next_chunk():
    model = load_model("tiny-random")
    plain = model.open_session("a red ball moving left", seed=1)
    switched = model.open_session("a red ball moving left", seed=1)
    before = [plain.next_chunk() for _ in range(3)]
    same = [switched.next_chunk() for _ in range(3)]
    assert switched.update_prompt("a blue square moving up", event_id="e1") == 3
    after_plain, after_switch = plain.next_chunk(), switched.next_chunk()
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(before, same))
    assert after_switch.prompt_event_id == "e1" and after_plain.prompt_event_id is None
    assert not np.array_equal(after_plain.frames, after_switch.frames)
    assert switched.next_chunk().prompt_event_id is None  # the event marks one chunk
    # the re-cache rebuilt the context from the kept latents: the cache is full again
    assert switched.cache.context_frames(0) == plain.cache.context_frames(0)


def test_prompt_embeddings_are_cached_per_prompt(monkeypatch):
    model = load_model("tiny-random")
    calls = []
    encode = model.text_encoder.encode
    monkeypatch.setattr(model.text_encoder, "encode", lambda p: calls.append(p) or encode(p))
    session = model.open_session("a yellow star", seed=0)
    frames_of(session, 4)
    model.open_session("a yellow star", seed=1).next_chunk()
    assert calls == [["a yellow star"]]


def test_diagonal_schedule_and_refresh_switch_count_forwards():
    model = tiny_model()
    cfg = model.config.model_copy(update={"sampler": model.config.sampler.model_copy(
        update={"steps_per_chunk": (4, 3, 2)})})
    diagonal = StreamModel(cfg, model.transformer, model.text_encoder, model.decoder)
    counts = []
    original = diagonal.run_forwards
    session = diagonal.open_session("red ball", seed=0)
    for _ in range(4):
        calls = []
        diagonal.run_forwards = lambda reqs: calls.append(reqs) or original(reqs)
        session.next_chunk()
        counts.append(len(calls))
    assert counts == [5, 4, 3, 3]  # steps + the t=0 refresh


def test_sampler_schedule_and_step():
    cfg = build_config().sampler
    assert step_timesteps(cfg, 4) == [1000.0, 750.0, 500.0, 250.0]
    assert step_timesteps(cfg, 2) == [1000.0, 250.0]
    sampler = FewStepSampler(cfg)
    sampler.set_timesteps(4)
    assert torch.allclose(sampler.sigmas, shift_sigma(torch.tensor([1.0, 0.75, 0.5, 0.25]), 5.0))
    x0, noise = torch.randn(1, 4, 2, 3, 3), torch.randn(1, 4, 2, 3, 3)
    s = sampler.sigmas[0]
    x_t = (1 - s) * x0 + s * noise
    nxt, pred = sampler.step(noise - x0, x_t, torch.Generator().manual_seed(0))  # the exact velocity
    torch.testing.assert_close(pred, x0)
    for _ in range(3):
        nxt, pred = sampler.step(noise - x0, nxt, torch.Generator().manual_seed(0))
    assert sampler.is_last is False and sampler.step_index == 4


@pytest.mark.parametrize("prompt", ["", "   ", "x" * 1001, None, 42])
def test_bad_prompts(prompt):
    model = load_model("tiny-random")
    with pytest.raises(InvalidPrompt):
        model.open_session(prompt, seed=0)
    session = model.open_session("ok", seed=0)
    with pytest.raises(InvalidPrompt):
        session.update_prompt(prompt)


@pytest.mark.parametrize("seed", [-1, 2**63, "7", 1.5, True])
def test_bad_seeds(seed):
    with pytest.raises(InvalidSeed):
        load_model("tiny-random").open_session("ok", seed=seed)


def test_bad_configs_and_shapes(tmp_path):
    with pytest.raises(InvalidConfig, match="policy"):
        build_config(attention={"policy": "quantum"})
    with pytest.raises(InvalidConfig, match="text_dim"):
        build_config(text_encoder={"dim": 7})
    model = load_model("tiny-random")
    with pytest.raises(ShapeMismatch):
        model.transformer.denoise(torch.randn(1, 3, 2, 8, 8), torch.tensor([0.0]),
                                  model.context_for("x"), model.transformer.full_attention(2))
    with pytest.raises(ModelNotFound, match="nope"):
        load_model(str(tmp_path / "nope"))


def test_checkpoint_round_trip_and_bad_checkpoints(tmp_path):
    model = load_model("tiny-random")
    with torch.no_grad():
        for p in model.transformer.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_model(tmp_path / "m", model.config, model.transformer)
    loaded = load_model(str(tmp_path / "m"))
    a = model.open_session("red ball", seed=2).next_chunk().frames
    b = loaded.open_session("red ball", seed=2).next_chunk().frames
    assert np.array_equal(a, b)

    from safetensors.torch import load_file, save_file
    state = load_file(tmp_path / "m" / "transformer.safetensors")
    state.pop("proj_out.bias")
    state["blocks.0.attn1.to_q.weight"] = torch.zeros(3, 3)
    save_file(state, tmp_path / "m" / "transformer.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys \['proj_out.bias'\].*wrong shapes blocks.0.attn1.to_q"):
        load_model(str(tmp_path / "m"))
    data = (tmp_path / "m" / "transformer.safetensors").read_bytes()
    (tmp_path / "m" / "transformer.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "model.json").write_text('{"attention": {"policy": "nope"}}')
    with pytest.raises(InvalidConfig):
        load_model(str(tmp_path / "m"))


def test_scheduler_batches_sessions_and_equals_running_them_alone():
    model = load_model("tiny-random")
    alone = {p: [c.frames for c in frames_of(model.open_session(p, seed=s), 4)]
             for p, s in [("red ball", 1), ("blue box", 2), ("green star", 3)]}
    scheduler = BatchScheduler(model, max_sessions=3).start()
    try:
        handles = {p: scheduler.open(p, s) for p, s in [("red ball", 1), ("blue box", 2)]}
        first = handles["red ball"].next_chunk()  # the other session is a chunk behind now
        handles["green star"] = scheduler.open("green star", 3)
        got = {p: [h.next_chunk().frames for _ in range(4 if p != "red ball" else 3)] for p, h in handles.items()}
        got["red ball"].insert(0, first.frames)
        for p in alone:
            assert all(np.array_equal(a, b) for a, b in zip(alone[p], got[p])), p
        assert scheduler.rows_forwarded > scheduler.forwards  # some forwards carried several sessions
        from engine.errors import CapacityError
        with pytest.raises(CapacityError):
            scheduler.open("one too many", 0)
        handles["blue box"].close()
        scheduler.open("now there is room", 0).close()
    finally:
        scheduler.shutdown()


def test_scheduler_never_hands_a_row_in_use_to_a_new_session():
    """Closing and reopening while the worker is mid-forward must not reset a row the
    forward is using (the row is released only between forwards)."""
    import threading

    model = load_model("tiny-random")
    scheduler = BatchScheduler(model, max_sessions=2).start()
    errors = []
    try:
        keeper = scheduler.open("steady stream", 1)

        def churn():
            try:
                for i in range(15):
                    h = scheduler.open(f"churn {i}", i)
                    h.next_chunk(timeout=30)
                    h.close()
            except Exception as exc:  # noqa: BLE001 - any failure is the test's failure
                errors.append(exc)

        worker = threading.Thread(target=churn)
        worker.start()
        got = [keeper.next_chunk(timeout=30) for _ in range(10)]
        worker.join(timeout=120)
        assert not errors, errors
        alone = [c.frames for c in frames_of(model.open_session("steady stream", seed=1), 10)]
        assert all(np.array_equal(a, b.frames) for a, b in zip(alone, got))
    finally:
        scheduler.shutdown()


def test_closing_a_handle_wakes_its_blocked_reader():
    import threading

    from engine.errors import SessionClosed

    model = load_model("tiny-random")
    scheduler = BatchScheduler(model, max_sessions=1).start()
    try:
        handle = scheduler.open("red ball", 0)
        handle.next_chunk(timeout=30)
        threading.Timer(0.5, handle.close).start()
        with pytest.raises(SessionClosed):
            for _ in range(100):  # read until the close arrives; blocks once drained
                item = handle.chunks.get(timeout=10)
                if isinstance(item, BaseException):
                    raise item
    finally:
        scheduler.shutdown()


def no_refresh(model: StreamModel) -> StreamModel:
    cfg = model.config.model_copy(update={"sampler": model.config.sampler.model_copy(
        update={"refresh_context": False})})
    return StreamModel(cfg, model.transformer, model.text_encoder, model.decoder)


@pytest.mark.parametrize("policy", ["ema_sink", "linear_state"])
def test_prompt_switch_keeps_the_long_range_memory(policy):
    """A re-cache recomputes the kept frames under the new prompt but keeps what they cannot
    rebuild: the EMA-folded sink and the linear state hold every evicted frame."""
    model = tiny_model(policy=policy, sink_frames=2, window_frames=2)
    session = model.open_session("a red ball moving left", seed=2)
    frames_of(session, 5)  # chunk 2 x 5 = 10 frames: 6 evicted
    cache = session.cache
    sink = slice(cache.sink_offset_frames * cache.tpf, cache.ring_offset_frames * cache.tpf)
    before = {"sink_k": cache.k[:, 0, sink].clone(), "sink_v": cache.v[:, 0, sink].clone(),
              **{k: v.clone() for k, v in cache.policy.state(slice(0, 1)).items()}}
    if policy == "linear_state":
        assert before["state_k"].abs().max() > 0  # evicted frames are in the state
    session.update_prompt("a blue square moving up")
    work = session.chunk_work()
    request = next(work)
    while request.timestep == 0.0 and request.commit:
        request = work.send(model.run_forwards([request])[0])
    after = {"sink_k": cache.k[:, 0, sink], "sink_v": cache.v[:, 0, sink], **cache.policy.state(slice(0, 1))}
    for name, value in before.items():
        if name.startswith("sink") and policy == "linear_state":
            assert (after[name] - value).abs().max() > 1e-6, name  # a plain sink is recomputed
        else:
            torch.testing.assert_close(after[name], value, atol=0, rtol=0)
    assert cache.context_frames(0) == 4  # sink + window full again


def test_prompt_switch_without_refresh_replays_at_the_committed_timestep():
    """Without the t=0 refresh the cache holds K/V of the last step's (noisy) input; a
    re-cache must replay those latents at that timestep, not clean ones at t=0, which the
    model never saw as context."""
    model = no_refresh(tiny_model())
    session = model.open_session("a red ball", seed=0)
    frames_of(session, 3)
    sampler = FewStepSampler(model.config.sampler)
    sampler.set_timesteps(4)
    last_t = float(sampler.timesteps[-1])
    assert all(t == last_t for _, t in session.kept.sink + list(session.kept.window))
    session.update_prompt("a blue square")
    replay = []
    work = session.chunk_work()
    request = next(work)
    while request.commit:
        replay.append(request.timestep)
        request = work.send(model.run_forwards([request])[0])
    assert replay and all(t == last_t for t in replay)


@pytest.mark.parametrize("policy", ["sink_window", "ema_sink", "linear_state"])
def test_rewind_and_switch_equals_switching_without_generating_ahead(policy):
    """A server that generated chunks 4 and 5 ahead, then got a prompt switch while only 0..3
    were delivered, rewinds to before chunk 4 and switches there: the stream is then exactly
    the one that switched at chunk 4 having never generated ahead (cache, kept latents,
    decoder state and RNG all restored; eviction, EMA folding and the linear state included)."""
    from engine.session import StreamSession

    model = tiny_model(policy=policy, sink_frames=2, window_frames=2)
    if policy == "linear_state":
        with torch.no_grad():
            for block in model.transformer.blocks:
                block.attn1.temporal_state_out.weight.normal_(0, 0.3)
    reference = model.open_session("a red ball moving left", seed=3)
    expected = frames_of(reference, 4)
    reference.update_prompt("a blue square moving up")
    expected += frames_of(reference, 2)

    ahead = StreamSession(model, "a red ball moving left", seed=3, rewind_chunks=3)
    got = frames_of(ahead, 6)  # chunks 4 and 5 generated ahead under the old prompt
    assert all(np.array_equal(x.frames, y.frames) for x, y in zip(got[:4], expected[:4]))
    assert ahead.rewind(4) and ahead.chunk_index == 4
    assert ahead.update_prompt("a blue square moving up") == 4
    got = got[:4] + frames_of(ahead, 2)
    for x, y in zip(got, expected):
        assert x.index == y.index
        torch.testing.assert_close(x.latents, y.latents, atol=1e-5, rtol=1e-5)
    assert ahead.rewind(1) is False  # older than rewind_chunks: refused, nothing changed
    assert ahead.chunk_index == 6


def test_rewind_keeps_its_memory_bounded():
    from engine.session import StreamSession

    model = tiny_model(policy="ema_sink", sink_frames=2, window_frames=2)
    session = StreamSession(model, "a red ball", seed=0, rewind_chunks=2)
    sizes = []
    for _ in range(12):
        session.next_chunk()
        sizes.append(session.cache.journal_bytes(0))
    assert sizes[-1] == sizes[-4] > 0  # the journal holds the last two chunks' writes, no more
    plain = model.open_session("a red ball", seed=0)
    frames_of(plain, 3)
    assert plain.cache.journal_bytes(0) == 0  # a session that never rewinds keeps no journal


def test_scheduled_switch_discards_what_was_made_ahead_and_resumes_after_the_delivered_chunk():
    """The consumer takes chunks 0..2 while the scheduler generates ahead (its queue and the
    chunk in progress); a switch with resume_after=2 throws those away, rewinds, and the
    next chunk the consumer gets is chunk 3 under the new prompt, equal to a stream that
    switched at chunk 3 without ever generating ahead."""
    model = tiny_model(policy="ema_sink", sink_frames=2, window_frames=2)
    reference = model.open_session("a red ball moving left", seed=5)
    expected = frames_of(reference, 3)
    reference.update_prompt("a blue square moving up", event_id="e9")
    expected += frames_of(reference, 2)
    scheduler = BatchScheduler(model, max_sessions=2, queue_chunks=2).start()
    try:
        handle = scheduler.open("a red ball moving left", seed=5)
        got = [handle.next_chunk(timeout=30) for _ in range(3)]
        deadline = time.monotonic() + 30
        while not handle.chunks.full() and time.monotonic() < deadline:  # let it generate ahead
            time.sleep(0.01)
        assert handle.chunks.full() and handle.session.chunk_index >= 5
        first = handle.switch_prompt("a blue square moving up", "e9", resume_after=2).result(timeout=30)
        assert first == 3
        got += [handle.next_chunk(timeout=30) for _ in range(2)]
    finally:
        scheduler.shutdown()
    assert [c.index for c in got] == [0, 1, 2, 3, 4]
    assert got[3].prompt_event_id == "e9"
    for x, y in zip(got, expected):
        torch.testing.assert_close(x.latents, y.latents, atol=1e-5, rtol=1e-5)
