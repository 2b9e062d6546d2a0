"""Training rollouts go through the engine's own chunk loop and step: a rollout's cache is
exactly what a stream's cache holds for the same noise."""

import pytest
import torch

from distill.rollout import rollout
from engine.model import StreamModel
from tests.engine_helpers import tiny_model

PROMPT = "a red ball moving left"


@pytest.mark.parametrize("refresh", [True, False])
@pytest.mark.parametrize("policy", ["sink_window", "ema_sink"])
def test_rollout_and_session_build_the_same_cache(refresh, policy):
    base = tiny_model(policy=policy, sink_frames=2, window_frames=2)
    cfg = base.config.model_copy(update={"sampler": base.config.sampler.model_copy(
        update={"refresh_context": refresh, "steps_per_chunk": (4, 2)})})
    model = StreamModel(cfg, base.transformer, base.text_encoder, base.decoder)
    chunks, seed = 4, 11
    session = model.open_session(PROMPT, seed=seed)
    streamed = torch.cat([session.next_chunk().latents for _ in range(chunks)], dim=2)
    last = [3, 1, 1, 1]  # every step run, as at inference (4 steps, then 2: the diagonal schedule)
    with torch.no_grad():
        rolled = rollout(model.transformer, cfg, model.context_for(PROMPT), chunks,
                         torch.Generator().manual_seed(seed), grad=False, exit_steps=last)
    torch.testing.assert_close(rolled.latents, streamed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rolled.cache.k[:, 0], session.cache.k[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rolled.cache.v[:, 0], session.cache.v[:, 0], atol=1e-5, rtol=1e-5)
    assert rolled.cache.context_frames(0) == session.cache.context_frames(0) == 4
    expected_t = 0.0 if refresh else float(rolled.context_timesteps[0])
    assert all(t == expected_t for t in rolled.context_timesteps) and (refresh or expected_t > 0)


def test_rollout_gradient_flows_through_the_exit_steps_only():
    model = tiny_model()
    student = model.transformer.train()
    out = rollout(student, model.config, model.context_for(PROMPT), 2, torch.Generator().manual_seed(0),
                  grad=True, exit_steps=[1, 2])
    out.latents.square().mean().backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert not out.cache.k.requires_grad


@pytest.mark.parametrize("policy", ["sink_window", "ema_sink"])
def test_rollout_with_a_switch_equals_a_stream_that_switched(policy):
    """A training rollout that switches prompts before chunk 3 re-caches exactly as a
    stream does (the same kept frames, the same policy rule), so the student trains on the
    context it will see after a viewer's switch."""
    model = tiny_model(policy=policy, sink_frames=2, window_frames=2)
    session = model.open_session(PROMPT, seed=4)
    streamed = [session.next_chunk().latents for _ in range(3)]
    session.update_prompt("a blue square moving up")
    streamed += [session.next_chunk().latents for _ in range(2)]
    with torch.no_grad():
        rolled = rollout(model.transformer, model.config, model.context_for(PROMPT), 5,
                         torch.Generator().manual_seed(4), grad=False, exit_steps=[3] * 5,
                         switch=(3, model.context_for("a blue square moving up")))
    torch.testing.assert_close(rolled.latents, torch.cat(streamed, dim=2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rolled.cache.k[:, 0], session.cache.k[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", ["sink_window", "ema_sink"])
def test_activation_checkpointing_recomputes_what_the_rollout_forward_read(policy, monkeypatch):
    """Checkpointed blocks are recomputed in backward, after later chunks have evicted frames
    (and folded them into the EMA sink) and a prompt switch has re-cached the window: each
    block keeps its own copy of the context it read, so the gradient is the one without
    checkpointing. Without that copy (frozen_context a no-op) it is not."""
    import copy

    from distill import parallel

    def gradient(checkpointing: bool) -> torch.Tensor:
        model = tiny_model(policy=policy, sink_frames=2, window_frames=2)
        student = copy.deepcopy(model.transformer).train()
        if checkpointing:
            parallel.checkpoint_blocks(student)
        out = rollout(student, model.config, model.context_for(PROMPT), 5, torch.Generator().manual_seed(3),
                      grad=True, exit_steps=[1, 0, 2, 1, 3], switch=(3, model.context_for("a blue square")))
        out.latents.square().mean().backward()
        return torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])

    plain = gradient(checkpointing=False)
    torch.testing.assert_close(gradient(checkpointing=True), plain, atol=1e-6, rtol=1e-5)
    monkeypatch.setattr(parallel, "frozen_context", lambda mode, layer: mode)
    assert (gradient(checkpointing=True) - plain).abs().max() > 1e-4


def test_a_linear_state_rollout_backpropagates_across_evictions():
    """The linear-state readout reads a state that later chunks' evictions update in place;
    the gradient forward must keep its own copy (autograd failed on it before)."""
    model = tiny_model(policy="linear_state", sink_frames=1, window_frames=2)
    student = model.transformer.train()
    with torch.no_grad():
        for block in student.blocks:
            block.attn1.temporal_state_out.weight.normal_(0, 0.1)
    out = rollout(student, model.config, model.context_for(PROMPT), 4, torch.Generator().manual_seed(0),
                  grad=True, exit_steps=[1, 2, 0, 3])
    out.latents.square().mean().backward()
    readout = student.blocks[0].attn1.temporal_state_out.weight.grad
    assert readout is not None and readout.abs().sum() > 0  # the state took part, and trained
