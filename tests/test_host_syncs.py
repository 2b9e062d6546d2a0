"""No host syncs in attention or cache code: a stream's forwards, cache writes, commits and
evictions never read a tensor's value on the host (`.item()`, `bool()`/`int()` of a
tensor, nonzero), which would stall a GPU in every layer of every step."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.engine_helpers import tiny_model

# The aten ops through which a tensor's value reaches Python.
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
              torch.ops.aten.item.default, torch.ops.aten.nonzero.default, torch.ops.aten.equal.default}


class NoHostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            raise AssertionError(f"host sync in the streaming step: {func}")
        self.ops += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("policy", ["sink_window", "ema_sink", "linear_state"])
def test_streaming_steps_read_nothing_back_to_the_host(policy):
    model = tiny_model(policy=policy, sink_frames=2, window_frames=2)
    step = model.step_fn
    checked = []

    def step_without_host_reads(*args, **kwargs):
        with NoHostReads() as mode:
            out = step(*args, **kwargs)
        checked.append(mode.ops)
        return out

    model.step_fn = step_without_host_reads
    session = model.open_session("a red ball moving left", seed=0)
    for _ in range(6):  # past the window: evictions, EMA folds, linear state
        session.next_chunk()
    session.update_prompt("a blue square")  # the re-cache's forwards and commits too
    session.next_chunk()
    assert len(checked) > 7 * 5 and min(checked) > 50  # every forward (re-cache included) ran under the mode


def test_the_check_catches_a_host_read():
    with pytest.raises(AssertionError, match="host sync"):
        with NoHostReads():
            x = torch.ones(3)
            float(x.sum())
