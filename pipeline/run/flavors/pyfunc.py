"""MLflow models: through ``mlflow.sklearn`` when they have that flavor, else ``mlflow.pyfunc``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.run.flavors.base import Flavor
from pipeline.run.flavors.pickled import from_estimator


class Pyfunc(Flavor):
    """An MLflow model through ``mlflow.pyfunc``: only ``predict``, features and outputs from its signature.

    A signature naming several output columns gives one output column each; anything else is one
    ``prediction``. ``trained_with`` is the MLflow release that saved it (``mlflow_version`` in MLmodel).
    """

    library = "mlflow"
    extra = "mlflow"
    format = "mlflow"

    @classmethod
    def from_file(cls, data: bytes, path: Path) -> "Flavor":
        """The directory at ``path`` (``data`` is the manifest the pin covered); see :func:`from_mlflow`."""
        cls._import("mlflow.pyfunc", path)
        return from_mlflow(path)

    @property
    def description(self) -> str:
        return "an MLflow pyfunc model"

    def features(self) -> tuple[str, ...] | None:
        schema = self.obj.metadata.get_input_schema()
        return tuple(schema.input_names()) if schema is not None and schema.has_input_names() else None

    def labels(self, method: str) -> list[Any] | None:
        """The signature's output columns when it names several, each an output column of its own."""
        schema = self.obj.metadata.get_output_schema()
        names = schema.input_names() if schema is not None and schema.has_input_names() else []
        return list(names) if len(names) > 1 else None

    def width(self, method: str) -> int:
        names = self.labels(method)
        return len(names) if names else 1

    def call(self, method: str, inputs: pd.DataFrame) -> Any:
        result = self.obj.predict(self.signed(inputs))
        names = self.labels(method)
        return result[names] if names and isinstance(result, pd.DataFrame) else result

    def signed(self, inputs: pd.DataFrame) -> pd.DataFrame:
        """``inputs`` in the types the signature names, where the contract's nullable integers and booleans are
        not dtypes MLflow checks against it.

        A ``double``/``float`` column gets NaN for a missing value (what ``read_sql`` gives a model's owner
        for a nullable integer or boolean); a ``boolean`` one holds ``True``/``False``/``None`` as
        ``read_sql`` gives them; ``long`` and ``integer`` columns without a missing value become numpy's.
        Anything else is left to MLflow's own schema check, whose message names the column.
        """
        schema = self.obj.metadata.get_input_schema()
        if schema is None or not schema.has_input_names():
            return inputs
        out = inputs.copy()
        for spec in schema.inputs:
            name, kind = spec.name, str(getattr(spec.type, "name", spec.type))
            if name not in out.columns:
                continue
            column = out[name]
            if kind in _FLOATS and not isinstance(column.dtype, pd.CategoricalDtype):
                out[name] = column.to_numpy(dtype=_FLOATS[kind], na_value=np.nan)
            elif kind == "boolean" and column.dtype == "boolean":
                missing = column.isna()
                out[name] = column.astype(object).where(~missing, None) if missing.any() else column.astype(bool)
            elif kind in ("long", "integer") and column.dtype == "Int64" and not column.isna().any():
                out[name] = column.astype(np.int64 if kind == "long" else np.int32)
        return out


#: The signature's floating types and the numpy dtype each is fed as.
_FLOATS = {"double": np.float64, "float": np.float32}


def from_mlflow(directory: Path) -> Flavor:
    """An MLflow model directory: through ``mlflow.sklearn`` when it has that flavor (so ``predict_proba`` and
    the estimator's own features work), else through ``mlflow.pyfunc``."""
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import Model as MlflowModel

    if "sklearn" in MlflowModel.load(str(directory)).flavors:
        return from_estimator(mlflow.sklearn.load_model(str(directory)))
    model = mlflow.pyfunc.load_model(str(directory))
    return Pyfunc(model, model.metadata.mlflow_version)
