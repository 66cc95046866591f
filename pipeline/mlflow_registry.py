"""MLflow's model registry at the edge: one registered model per variant, one per dataset with the alias ``champion``.

Names: ``<dataset>.<variant>`` (e.g. ``pets.cnn_subclassed``) holds a version
per trained model of the variant; ``<dataset>`` (``pets``, ``houses``) holds
a version per model that became the dataset's champion, and its alias
:data:`ALIAS` names the current one, so ``models:/pets@champion`` is always
the dataset's best model. Versions point at their run's model as
``runs:/<run id>/model``: the registry stores no artifact path of its own, and
each version is tagged with the variant, its model file's md5 and its test
metrics. Registering is idempotent: a run already registered under a name
gets its existing version back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline import tracking

log = logging.getLogger(__name__)

ALIAS = "champion"
DECISION_TAG = "champion.decision"  # the last decision, on the dataset's registered model and on the challenger's run


@dataclass(frozen=True)
class Version:
    """One registered model version and the tags it carries (``variant``, ``test_<metric>``, ...)."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _client():  # noqa: ANN202 - an MlflowClient
    return tracking._mlflow().MlflowClient()


def variant_name(dataset: str, variant: str) -> str:
    """The registered model of one variant: ``<dataset>.<variant>``."""
    return f"{dataset}.{variant}"


def has_model(run_id: str) -> bool:
    """Whether the run logged an MLflow model (train does; a run made for a model DVC restored does not)."""
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_MODELS

    return MLFLOW_LOGGED_MODELS in _client().get_run(run_id).data.tags


def register(name: str, run_id: str, tags: Mapping[str, Any], description: str = "") -> Version:
    """The version of ``name`` holding run ``run_id``'s model (created with ``tags`` when the run has none yet)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description or None)
    clean = {k: str(v) for k, v in tags.items()}
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if found:
        version = max(found, key=lambda v: int(v.version))
        for key, value in clean.items():  # the metrics of a re-evaluated model may have moved
            client.set_model_version_tag(name, version.version, key, value)
        return Version(name, str(version.version), run_id, {**version.tags, **clean})
    created = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id, tags=clean)
    log.info("registered %s version %s (run %s)", name, created.version, run_id)
    return Version(name, str(created.version), run_id, clean)


def champion(dataset: str) -> Version | None:
    """The version the alias ``champion`` of registered model ``dataset`` names, or None (no model, no alias)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        model = client.get_registered_model(dataset)
    except MlflowException:
        return None
    if ALIAS not in (model.aliases or {}):
        return None
    found = client.get_model_version_by_alias(dataset, ALIAS)
    return Version(dataset, str(found.version), found.run_id, dict(found.tags))


def crown(dataset: str, run_id: str, tags: Mapping[str, Any]) -> Version:
    """Register run ``run_id``'s model under ``dataset`` and point the alias ``champion`` at that version."""
    version = register(dataset, run_id, tags, description=f"The best model of {dataset}: models:/{dataset}@{ALIAS}")
    _client().set_registered_model_alias(dataset, ALIAS, version.version)
    log.info("models:/%s@%s -> version %s (%s)", dataset, ALIAS, version.version, tags.get("variant"))
    return version


def record(dataset: str, challenger_run: str, decision: Mapping[str, Any]) -> None:
    """Log ``decision`` on the dataset's registered model and the challenger's run (tag :data:`DECISION_TAG`, JSON)."""
    client = _client()
    text = json.dumps(dict(decision), sort_keys=True)
    client.set_registered_model_tag(dataset, DECISION_TAG, text)
    client.set_tag(challenger_run, DECISION_TAG, text)
