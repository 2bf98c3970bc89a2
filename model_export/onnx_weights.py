"""Store an ONNX graph's weights as float16 and compute in float32, to halve a model directory on disk.

Each large float32 initializer is replaced by its float16 copy and a Cast back to float32 in front of
the nodes that read it. ONNX Runtime folds those casts once when it builds the session, so the graph runs
in float32 exactly as before, on every execution provider; only the weights' rounding changes (a
relative error of at most 2^-11 per weight). The export measures what that rounding does to the outputs
against torch and refuses the graph when it exceeds the float16 tolerance (model_export.export).

Small initializers (biases, norms, shapes) stay float32: they weigh nothing and carry scale factors whose
rounding would cost more than it saves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MIN_ELEMENTS = 1024
"""Initializers smaller than this stay float32."""
FLOAT16_SUFFIX = "__float16"


def store_float16(path: Path, min_elements: int = MIN_ELEMENTS) -> dict[str, Any]:
    """Rewrite ``path`` with float16 weights; returns how many initializers and bytes changed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    limit = float(np.finfo(np.float16).max)
    casts, converted, before, after = [], 0, 0, 0
    for index, init in enumerate(graph.initializer):
        if init.data_type != TensorProto.FLOAT or init.name in graph_inputs:
            continue
        array = numpy_helper.to_array(init)
        if array.size < min_elements or not np.all(np.abs(array) <= limit):
            continue
        name = init.name
        half = numpy_helper.from_array(array.astype(np.float16), name + FLOAT16_SUFFIX)
        graph.initializer[index].CopyFrom(half)  # ``init`` is this same message: read its name first
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT, name=name + "_to_float32"))
        converted += 1
        before += array.nbytes
        after += array.size * 2
    for position, node in enumerate(casts):
        graph.node.insert(position, node)
    onnx.save(model, str(path))
    return {"initializers": converted, "bytes_float32": before, "bytes_float16": after}
