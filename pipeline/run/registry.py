"""Registry models (``[model] uri = "models:/NAME@ALIAS"`` or ``"models:/NAME/VERSION"``), through MLflow.

MLflow is an optional extra and is imported only when a job names a registry model. An alias
is resolved once, to a version, and only that version is downloaded: an alias that moves
while a run goes on cannot give it a mix of two models.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.errors import ModelError, first_line
from pipeline.jobspec import ModelSpec, parse_uri
from pipeline.run import flavors

EXTRA = flavors.pip_install("mlflow")


@dataclass(frozen=True)
class Source:
    """Where a registry model came from, as recorded in ``pipeline_versions.model_source``."""

    uri: str                    # as the job file says it
    name: str
    version: int
    alias: str | None
    run_id: str | None
    signature: dict[str, Any] | None  # MLflow's signature as its MLmodel file holds it, or None

    @property
    def resolved(self) -> str:
        """The URI of the one version this run uses."""
        return f"models:/{self.name}/{self.version}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Download:
    source: Source
    #: What the sha256 pin covers: a scikit-learn model's serialized estimator (model.pkl), else the whole
    #: downloaded directory (the manifest :func:`pipeline.run.flavors.read_bytes` makes of it).
    file: Path
    load: Callable[[], flavors.Flavor]  # the model, loaded by MLflow from the same directory


@contextmanager
def download(spec: ModelSpec) -> Iterator[Download]:
    """Resolve ``spec.uri`` to one version and download it into a private directory, removed afterwards.

    Raises:
        ModelError: MLflow is not installed, or the registry has no such model, alias or version.
    """
    try:
        import mlflow.artifacts
        from mlflow import MlflowClient
        from mlflow.models import Model as MlflowModel
    except ImportError:
        raise ModelError(f"{spec.uri}: registry models need MLflow: {EXTRA}") from None
    name, alias, version = parse_uri(spec.uri)
    # MLflow's download bar would interleave with the run's own progress; a user's setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="pipeline-model-") as tmp:
        try:
            client = MlflowClient(tracking_uri=spec.tracking_uri)
            found = (client.get_model_version_by_alias(name, alias) if alias is not None
                     else client.get_model_version(name, str(version)))
            # The version's own location, found with this client: download_artifacts("models:/...") would ask
            # the process-wide registry, not the job's tracking_uri.
            location = client.get_model_version_download_uri(name, found.version)
            directory = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp,
                                                                 tracking_uri=spec.tracking_uri))
            meta = MlflowModel.load(str(directory))
        except Exception as exc:  # MLflow raises its own exceptions, and the HTTP and store ones beneath
            raise ModelError(f"{spec.uri}: cannot resolve it in the MLflow registry: {first_line(exc)}") from None
        sklearn = meta.flavors.get("sklearn")
        source = Source(spec.uri, name, int(found.version), alias, found.run_id or None,
                        meta.signature.to_dict() if meta.signature is not None else None)
        yield Download(source, directory if sklearn is None else directory / sklearn["pickled_model"],
                       lambda: flavors.from_mlflow(directory))
