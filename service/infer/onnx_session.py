"""ONNX Runtime sessions for the three graphs of a model directory.

One place builds sessions so that the provider list and thread counts from the settings are applied the
same way to every graph, and so that a missing or corrupt graph becomes a ``ModelDirectoryError`` naming
the file instead of an ONNX Runtime traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.errors import InferenceError, ModelDirectoryError


def available_providers(wanted: list[str] | None) -> list[str]:
    """The wanted providers that this onnxruntime build has, in order; CPU is always the last resort."""
    have = set(ort.get_available_providers())
    chosen = [p for p in (wanted or ["CPUExecutionProvider"]) if p in have]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxGraph:
    """One inference session with named inputs; ``run`` returns the outputs as a name -> array dict."""

    def __init__(self, path: Path, providers: list[str] | None = None, intra_op_threads: int = 0,
                 inter_op_threads: int = 1) -> None:
        if not path.is_file():
            raise ModelDirectoryError(f"missing ONNX graph {path.name} in {path.parent}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = int(inter_op_threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=available_providers(providers))
        except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt graphs
            raise ModelDirectoryError(f"cannot load ONNX graph {path.name}: {exc}") from exc
        self.name = path.name
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise InferenceError(f"{self.name}: missing inputs {sorted(missing)}")
        try:
            outputs = self.session.run(self.output_names, {k: inputs[k] for k in self.input_names})
        except Exception as exc:
            raise InferenceError(f"{self.name} failed: {exc}") from exc
        return dict(zip(self.output_names, outputs, strict=True))
