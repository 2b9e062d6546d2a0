"""ONNX Runtime: offline graph optimisation into the engine cache, and a runner that
reads torch tensors and writes into preallocated torch outputs through IO binding (no
numpy round trip, and on CUDA no host copy)."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import RuntimeUnavailable

# ONNX element types by torch dtype (onnx.TensorProto values; bfloat16 has no numpy type).
ONNX_TYPES = {torch.float32: 1, torch.uint8: 2, torch.int64: 7, torch.bool: 9, torch.float16: 10,
              torch.bfloat16: 16}
TORCH_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16,
               "tensor(bool)": torch.bool, "tensor(int64)": torch.int64}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailable("onnxruntime is not installed (pip install onnxruntime, or "
                                 "onnxruntime-gpu for CUDA)") from exc
    return onnxruntime


def providers_for(device: torch.device) -> list[str]:
    ort = import_onnxruntime()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeUnavailable("onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu), "
                                     "or run the model on the CPU")
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise RuntimeUnavailable(f"onnxruntime backend does not run on device {device}")


def version() -> str:
    return import_onnxruntime().__version__


def optimise(source: Path, target: Path, device: torch.device) -> Path:
    """Run ONNX Runtime's graph optimisations once and save the result, so a server start
    only loads it. Extended level: its fusions are the same on every machine of a
    provider; the layout-specific level runs again (cheaply) at load."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    # Large graphs keep their weights in one external file beside the graph.
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                     target.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(source), options, providers=providers_for(device))
    return target


class OnnxRuntimeRunner:
    """One ONNX graph on one device. `run(inputs, outputs)` binds torch tensors by name."""

    def __init__(self, path: Path, device: torch.device, threads: int | None = None):
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device.type == "cpu":
            # As many threads as torch uses: one setting (torch.set_num_threads) governs
            # the process, and the two backends compare on equal terms.
            options.intra_op_num_threads = threads or torch.get_num_threads()
            # ORT's pool threads spin between ops by default. Between the graph's runs
            # torch's sampler and cache code (and, in a server, encoding and the event loop)
            # need those cores: on 2 cores the default model streamed 1.5x faster without
            # spinning (bench/serve_load.py raw engine 197-217 vs 135 frames/s).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.device = device
        self.session = ort.InferenceSession(str(path), options, providers=providers_for(device))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._output_types = {o.name: TORCH_TYPES[o.type] for o in self.session.get_outputs()}

    def output_dtype(self, name: str) -> torch.dtype:
        return self._output_types[name]

    def _bind(self, bind, name: str, tensor: torch.Tensor) -> None:
        bind(name, self.device.type, self.device.index or 0, ONNX_TYPES[tensor.dtype], tuple(tensor.shape),
             tensor.data_ptr())

    def run(self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """inputs by name (inputs the graph does not use are skipped); outputs: tensors of
        the right shape and dtype that receive the results."""
        binding = self.session.io_binding()
        held = []  # keep contiguous copies alive until the run is done
        for name in self.input_names:
            tensor = inputs[name].contiguous()
            held.append(tensor)
            self._bind(binding.bind_input, name, tensor)
        for name in self.output_names:
            self._bind(binding.bind_output, name, outputs[name])
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch kernels
        self.session.run_with_iobinding(binding)
        return outputs
