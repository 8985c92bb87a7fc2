"""LightGBM and XGBoost boosters in their libraries' own formats (no pickle: loading them runs no code)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.run.flavors.base import Flavor


class Booster(Flavor):
    """A gradient-boosting booster in its library's own format, which records its objective but not its classes.

    A classifier objective gives the methods of the library's scikit-learn wrapper for classes ``0..k-1``:
    ``predict_proba`` (a binary booster's ``p`` as ``1 - p, p``), ``predict`` (the most probable class, as
    ``LGBMClassifier`` and ``XGBClassifier`` do), ``decision_function`` (the raw scores). Any other objective
    (regression, ranking, a custom one) gives only ``predict``, the booster's own answer.
    """

    def __init__(self, obj: Any, objective: str, n_classes: int | None, trained_with: str | None = None) -> None:
        super().__init__(obj, trained_with)
        self.objective = objective
        #: 2 for a binary classifier, k for a multiclass one, None for any other objective.
        self.n_classes = n_classes

    @property
    def description(self) -> str:
        return f"a {self.library} booster with objective {self.objective!r}"

    def classes(self) -> list[Any] | None:
        return None if self.n_classes is None else list(range(self.n_classes))

    def has_method(self, method: str) -> bool:
        return method == "predict" or self.n_classes is not None

    def width(self, method: str) -> int:
        """One column per class for probabilities, and for a multiclass booster's raw scores; else one."""
        per_class = method == "predict_proba" or (method == "decision_function" and (self.n_classes or 0) > 2)
        return self.n_classes if per_class and self.n_classes else 1

    def call(self, method: str, inputs: pd.DataFrame) -> Any:
        answer = self.predict(inputs, raw=method == "decision_function")
        if method == "decision_function" or self.n_classes is None:
            return answer
        proba = np.column_stack([1 - answer, answer]) if answer.ndim == 1 else answer
        return proba if method == "predict_proba" else proba.argmax(axis=1)

    def predict(self, inputs: pd.DataFrame, raw: bool) -> np.ndarray:
        """The booster's own answer: probabilities (or a regression's values), or raw scores with ``raw``."""
        raise NotImplementedError


class LightGBM(Booster):
    """A LightGBM booster saved as text (``booster.save_model("m.txt")``).

    The file's ``version=v4`` line is the format's version, not LightGBM's, so ``trained_with`` stays None.
    """

    library = "lightgbm"
    extra = "lightgbm"
    format = "lightgbm"

    @classmethod
    def from_file(cls, data: bytes, path: Path) -> "Flavor":
        lightgbm = cls._import("lightgbm", path)
        booster = lightgbm.Booster(model_str=data.decode())  # the bytes checked are the bytes loaded
        objective = str(booster.params.get("objective", "custom"))
        n_classes = {"binary": 2, "multiclass": booster.num_model_per_iteration(),
                     "multiclassova": booster.num_model_per_iteration()}.get(objective)
        return cls(booster, objective, n_classes)

    def features(self) -> tuple[str, ...] | None:
        names = tuple(self.obj.feature_name())
        unnamed = names == tuple(f"Column_{i}" for i in range(len(names)))  # LightGBM's names for an array's columns
        return None if unnamed else names

    def n_features(self) -> int | None:
        return self.obj.num_feature()

    def predict(self, inputs: pd.DataFrame, raw: bool) -> np.ndarray:
        return self.obj.predict(inputs, raw_score=raw)


class XGBoost(Booster):
    """An XGBoost booster saved as JSON or UBJSON (``booster.save_model("m.json")`` or ``"m.ubj"``).

    ``trained_with`` is read from the file: the booster's config names the installed XGBoost, not the writer.
    """

    library = "xgboost"
    extra = "xgboost"
    format = "xgboost"

    @classmethod
    def from_file(cls, data: bytes, path: Path) -> "Flavor":
        xgboost = cls._import("xgboost", path)
        booster = xgboost.Booster()
        booster.load_model(bytearray(data))
        learner = json.loads(booster.save_config())["learner"]
        objective = learner["objective"]["name"]
        n_classes = {"binary:logistic": 2,
                     "multi:softprob": int(learner["learner_model_param"]["num_class"])}.get(objective)
        return cls(booster, objective, n_classes, _xgboost_version(data))

    def features(self) -> tuple[str, ...] | None:
        names = self.obj.feature_names
        return None if names is None else tuple(names)

    def n_features(self) -> int | None:
        return self.obj.num_features()

    def predict(self, inputs: pd.DataFrame, raw: bool) -> np.ndarray:
        import xgboost

        categorical = "c" in (self.obj.feature_types or [])
        return self.obj.predict(xgboost.DMatrix(inputs, enable_categorical=categorical), output_margin=raw)


def _xgboost_version(data: bytes) -> str | None:
    """The XGBoost release that wrote a JSON or UBJSON model file: its last key (keys are sorted), ``version``."""
    text = re.search(rb'"version":\s*\[(\d+),(\d+),(\d+)\]\s*}\s*\Z', data[-64:])
    if text:
        return ".".join(part.decode() for part in text.groups())
    binary = re.search(rb"version\[#L.{8}i(.)i(.)i(.)}\Z", data[-64:], re.DOTALL)  # a UBJSON array of 3 int8
    return ".".join(str(part[0]) for part in binary.groups()) if binary else None
