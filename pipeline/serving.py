"""The pyfunc loader of the MLflow models the pipeline logs (``mlflow.pyfunc.load_model``, ``mlflow models serve``).

:func:`pipeline.tracking.log_model` copies this package into the model's
``code/`` folder and names this module as the pyfunc flavor's
``loader_module``; MLflow puts ``code/`` on ``sys.path`` first, so a process
that does not have the project (another folder, a serving container) loads it
from the model itself. Loading imports the model registry first: its families
register the project's Keras classes (``SeedCNN``, the flip TTA layers, the
log-price output), without which Keras cannot rebuild the model. Predicting
feeds the named inputs through ``tf.data`` exactly as ``evaluate`` and
``predict`` do: Keras's own ``predict`` cannot take the zip codes' NumPy
string arrays.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class ServedModel:
    """A pipeline Keras model behind MLflow's pyfunc ``predict``."""

    def __init__(self, model: Any, names: tuple[str, ...]) -> None:
        self.model = model
        self.names = names  # the signature's named inputs, in order

    def get_raw_model(self) -> Any:
        """The Keras model (MLflow's ``unwrap_python_model`` convention for flavors)."""
        return self.model

    def inputs(self, data: Any) -> dict[str, np.ndarray]:
        """MLflow's parsed request (a dict of arrays, one array, or a DataFrame) as the named input arrays."""
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            data = {c: np.stack(data[c].to_numpy()) if data[c].dtype == object else data[c].to_numpy() for c in data}
        if not isinstance(data, dict):
            data = {self.names[0]: data}
        missing = [n for n in self.names if n not in data]
        if missing:
            raise ValueError(f"missing input{'s' if len(missing) > 1 else ''} {', '.join(missing)}; the model takes {self.names}")
        arrays = {n: np.asarray(data[n]) for n in self.names}
        # tf.data takes str arrays, not object ones (how JSON strings arrive)
        return {n: a.astype(str) if a.dtype.kind in "OSU" else a for n, a in arrays.items()}

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """The model's output for a batch, fed through ``tf.data`` as evaluation feeds the test split."""
        import keras

        from pipeline.training.inputs import make_dataset

        x = self.inputs(data)
        n = len(next(iter(x.values())))
        ds = make_dataset(x, np.zeros((n, 1), np.float32), 64, None, as_dict=not isinstance(self.model, keras.Sequential))
        return self.model.predict(ds, verbose=0)


def load(path: str | Path) -> ServedModel:
    """The MLflow model in folder ``path`` (its ``MLmodel``, ``data/model.keras``), with the project's layers registered."""
    from mlflow.keras.load import _load_keras_model
    from mlflow.models import Model
    from mlflow.models.model import MLMODEL_FILE_NAME

    from pipeline.models import registry

    registry.names()  # imports every family: their register_keras_serializable classes
    conf = Model.load(str(Path(path) / MLMODEL_FILE_NAME))
    model = _load_keras_model(str(path), conf, safe_mode=True)
    names = tuple(conf.signature.inputs.input_names()) if conf.signature else ("image",)
    return ServedModel(model, names)


def _load_pyfunc(path: str) -> ServedModel:
    """MLflow's pyfunc entry point: ``path`` is the model's folder."""
    return load(path)
