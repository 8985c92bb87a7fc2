"""ONNX graphs through onnxruntime: the safe format, since loading one runs no code."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ModelError
from pipeline.run.flavors.base import Flavor

#: The ONNX input types a chunk is converted to (anything else is refused when the model is loaded).
_ONNX_TYPES: dict[str, Any] = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                               "tensor(int64)": np.int64, "tensor(string)": object}


class Onnx(Flavor):
    """An ONNX graph, run by onnxruntime: the safe format, since loading one runs no code.

    Features: a graph with one ``[rows, 1]`` input per column (what skl2onnx makes of a pipeline on mixed
    columns) names them; a graph with a single ``[rows, n]`` input does not, and takes the
    ``[model] features`` in that order.
    ``predict`` is the graph's first output (skl2onnx's ``label``, or a regressor's ``variable``) and
    ``predict_proba`` its second (``probabilities``, a ZipMap of ``{class: p}`` or a ``[rows, k]`` tensor),
    whose classes are the ``classlabels_*`` of the classifier nearest the outputs. The file names the
    converter that wrote it (``trained_with``, e.g. "skl2onnx 1.20.0"), not an onnxruntime release, so
    nothing is compared with the installed onnxruntime.
    """

    library = "onnxruntime"
    extra = "onnx"
    format = "onnx"
    compares_versions = False

    def __init__(self, data: bytes, proto: Any, path: Path) -> None:
        super().__init__(_onnx_session(data), f"{proto.producer_name} {proto.producer_version}".strip() or None)
        #: Kept to rebuild the session after unpickling (Dask sends the model to its workers).
        self.data = data
        self.inputs = [(i.name, i.type, i.shape) for i in self.obj.get_inputs()]
        self.outputs = [(o.name, o.shape) for o in self.obj.get_outputs()]
        self.class_labels = _onnx_classes(proto)
        per_column = len(self.inputs) > 1
        for name, kind, shape in self.inputs:
            if kind not in _ONNX_TYPES:
                raise ModelError(f"{path}: ONNX input {name!r} is a {kind}; the pipeline feeds "
                                 f"{', '.join(_ONNX_TYPES)}")
            if len(shape) != 2 or (per_column and shape[1] != 1):
                raise ModelError(f"{path}: ONNX input {name!r} has shape {shape}; the pipeline feeds one "
                                 "[rows, features] input, or one [rows, 1] input per column")

    @classmethod
    def from_file(cls, data: bytes, path: Path) -> "Flavor":
        onnx = cls._import("onnx", path)
        cls._import("onnxruntime", path)
        return cls(data, onnx.load_model_from_string(data), path)

    @functools.cached_property
    def obj(self) -> Any:
        """The inference session, rebuilt from the bytes on first use after unpickling (it cannot be pickled)."""
        return _onnx_session(self.data)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "obj"}

    @property
    def description(self) -> str:
        return f"an ONNX graph with output(s) {', '.join(name for name, _ in self.outputs)}"

    def features(self) -> tuple[str, ...] | None:
        return tuple(name for name, _, _ in self.inputs) if len(self.inputs) > 1 else None

    def n_features(self) -> int | None:
        if len(self.inputs) > 1:
            return len(self.inputs)
        columns = self.inputs[0][2][1]
        return columns if isinstance(columns, int) else None

    def classes(self) -> list[Any] | None:
        return self.class_labels

    def has_method(self, method: str) -> bool:
        return method == "predict" or (method == "predict_proba" and len(self.outputs) > 1)

    def width(self, method: str) -> int:
        shape = self.outputs[0 if method == "predict" else 1][1]
        columns = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
        if method == "predict":
            return columns or 1
        if columns is None and self.class_labels is None:
            raise ModelError(f"predict_proba: cannot tell how many classes output {self.outputs[1][0]!r} holds")
        return columns or len(self.class_labels)

    def call(self, method: str, inputs: pd.DataFrame) -> Any:
        feeds = {name: _onnx_tensor(inputs if len(self.inputs) == 1 else inputs[[name]], kind)
                 for name, kind, _ in self.inputs}
        result = self.obj.run([self.outputs[0 if method == "predict" else 1][0]], feeds)[0]
        if isinstance(result, list):  # a ZipMap: one {class: probability} per row, in float32
            return np.array([[row[c] for c in self.class_labels] for row in result], dtype=np.float32)
        return result


def _onnx_session(data: bytes) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])


def _onnx_classes(proto: Any) -> list[Any] | None:
    """The class labels of the classifier (or ZipMap) nearest the graph's outputs, or None."""
    from onnx.helper import get_attribute_value

    for node in reversed(proto.graph.node):
        for attribute in node.attribute:
            if attribute.name in ("classlabels_int64s", "classlabels_ints", "classlabels_strings"):
                values = get_attribute_value(attribute)
                if values:
                    return [v.decode() if isinstance(v, bytes) else int(v) for v in values]
    return None


def _onnx_tensor(frame: pd.DataFrame, kind: str) -> np.ndarray:
    """``frame`` as an ONNX input of type ``kind``.

    ONNX string tensors cannot hold a missing value, so a missing text becomes ``""`` (what a
    converted OneHotEncoder treats as an unknown category); int64 tensors cannot either, so a
    missing value there is refused, naming the column.
    """
    if kind == "tensor(string)":
        return frame.astype("string").fillna("").to_numpy(dtype=object)
    if kind == "tensor(int64)":
        missing = [str(c) for c in frame.columns if frame[c].isna().any()]
        if missing:
            raise ModelError(f"column(s) {', '.join(missing)} hold a missing value, which the ONNX model's "
                             "int64 input cannot take")
        return frame.to_numpy(dtype=np.int64)
    return frame.to_numpy(dtype=_ONNX_TYPES[kind], na_value=np.nan)
