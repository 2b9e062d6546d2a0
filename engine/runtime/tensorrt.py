"""TensorRT: engines built from the exported ONNX graph with the TensorRT Python API, and
a runner that binds torch CUDA tensors by address.

UNTESTED: no GPU with TensorRT was available where this was written (see
docs/backends.md). It follows the TensorRT 10 API: strongly typed networks (precision
comes from the exported graph: bf16/fp16 weights, fp32 norms and RoPE as diffusers
keeps them; fp8 from Q/DQ nodes that NVIDIA ModelOpt inserts), `build_serialized_network`,
named I/O tensors and `execute_async_v3` on torch's current stream.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from .errors import EngineBuildFailed, RuntimeUnavailable

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 8 << 30


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise RuntimeUnavailable("TensorRT is not installed (it comes with the `gpu` extra: "
                                 "pip install 'framecast[gpu]', or use the GPU image)") from exc
    return tensorrt


def require_gpu(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if not torch.cuda.is_available():
        raise RuntimeUnavailable("TensorRT needs a CUDA GPU and none is visible here "
                                 "(use --backend onnxruntime, compile or eager on a CPU)")
    if device.type != "cuda":
        raise RuntimeUnavailable(f"TensorRT runs on a CUDA device; the model is on {device} (set --device cuda)")
    return device


def version() -> str:
    return import_tensorrt().__version__


def quantize_fp8(onnx_path: Path, target: Path, calibration: dict[str, torch.Tensor]) -> Path:
    """Insert FP8 Q/DQ nodes with NVIDIA ModelOpt's ONNX PTQ (max calibration on the
    given inputs); TensorRT's strongly typed network then runs those GEMMs in fp8."""
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        raise RuntimeUnavailable("fp8 engines need NVIDIA ModelOpt (pip install 'nvidia-modelopt[onnx]')") from exc
    data = {name: t.detach().float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
            for name, t in calibration.items()}
    quantize(onnx_path=str(onnx_path), quantize_mode="fp8", calibration_data=data, calibration_method="max",
             output_path=str(target), use_external_data_format=True)
    return target


def build_engine(onnx_path: Path, plan_path: Path, batch_axes: dict[str, int], max_batch: int,
                 opt_batch: int = 1) -> Path:
    """Parse the ONNX graph and build one plan whose batch axis spans 1..max_batch
    (kernels tuned for `opt_batch`: a single stream's latency)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads the external weights beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildFailed(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        axis = batch_axes.get(tensor.name, 0)
        shapes = []
        for batch in (1, min(opt_batch, max_batch), max_batch):
            s = list(shape)
            s[axis] = batch
            shapes.append(tuple(s))
        profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildFailed(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    plan_path.write_bytes(bytes(plan))
    return plan_path


class TensorRTRunner:
    """One deserialised engine. `run(inputs, outputs)` binds torch CUDA tensors by name."""

    def __init__(self, plan_path: Path, device: torch.device):
        trt = import_tensorrt()
        self.device = require_gpu(device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise EngineBuildFailed(f"{plan_path}: TensorRT could not load this engine (another TensorRT "
                                    "version or GPU? rebuild with framecast build-engines)")
        self.context = self.engine.create_execution_context()
        # One execution context holds one set of shapes and addresses: calls from the
        # scheduler and from a job thread must not interleave.
        self.lock = threading.Lock()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        types = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                 trt.bool: torch.bool, trt.int64: torch.int64}
        self._dtypes = {n: types[self.engine.get_tensor_dtype(n)] for n in names}

    def output_dtype(self, name: str) -> torch.dtype:
        return self._dtypes[name]

    def run(self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self.lock:
            return self._run(inputs, outputs)

    def _run(self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        held = []
        for name in self.input_names:
            tensor = inputs[name].contiguous()
            held.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        for name in self.output_names:
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed (see its log above)")
        # The contiguous copies in `held` may be freed now: torch's caching allocator reuses
        # memory in the order of this same stream, after the enqueued engine has read it.
        return outputs
