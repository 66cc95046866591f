"""MLflow accounts on the stack's server: users, and their write access to what the project shares.

basic-auth gives every user READ on what others created (``default_permission``),
so one member cannot write into another's experiment (403). The project's
experiments (one per dataset, and pretraining) and registered models (one per
dataset and one per variant) are created by the admin and each member is
granted EDIT on them: the whole team logs and registers there, while a
personal experiment stays its creator's. ``stack up`` shares what a new
variant or dataset adds.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from pipeline import files
from pipeline.errors import PipelineError
from pipeline.stack.layout import ADMIN, Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shared:
    """What the whole team writes to: the project's experiments and registered models (names)."""

    experiments: tuple[str, ...]
    models: tuple[str, ...]


@contextmanager
def as_user(uri: str, username: str, password: str) -> Iterator[None]:
    """MLflow's clients read the account from the environment: set it for the block, then restore it."""
    keys = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def members(layout: Layout) -> list[str]:
    """The accounts ``stack user add`` created (names only; passwords are never stored)."""
    return json.loads(layout.users.read_text()) if layout.users.exists() else []


def share(uri: str, secret: Mapping[str, str], shared: Shared, users: Iterable[str]) -> None:
    """Create the project's experiments and registered models as the admin where missing; grant every user EDIT on them."""
    import mlflow
    from mlflow.exceptions import RestException
    from mlflow.server import get_app_client

    with as_user(uri, ADMIN, secret["admin_password"]):
        client = mlflow.MlflowClient(uri)
        resources = []
        for name in shared.experiments:
            found = client.get_experiment_by_name(name)
            resources.append(("experiment", found.experiment_id if found else client.create_experiment(name)))
        existing = {model.name for model in client.search_registered_models(max_results=1000)}
        for name in shared.models:
            if name not in existing:
                client.create_registered_model(name)
            resources.append(("registered_model", name))
        auth = get_app_client("basic-auth", tracking_uri=uri)
        for user in users:
            for kind, key in resources:
                try:
                    auth.grant_user_permission(user, kind, key, "EDIT")
                except RestException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # granted by an earlier `up`
                        raise


def add_user(layout: Layout, uri: str, secret: Mapping[str, str], name: str, shared: Shared) -> str:
    """Create the MLflow account ``name`` with a generated password (returned, never stored) and EDIT on ``shared``."""
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name == ADMIN:
        raise PipelineError(f"stack user add {name!r}: a user name is letters, digits, '-', '_' or '.', and not {ADMIN!r}")
    password = secrets.token_urlsafe(18)
    with as_user(uri, ADMIN, secret["admin_password"]):
        try:
            get_app_client("basic-auth", tracking_uri=uri).create_user(name, password)
        except MlflowException as exc:
            raise PipelineError(f"stack user add {name}: {uri} refused: {exc.message}") from None
    users = sorted({*members(layout), name})
    files.write_json(layout.users, users)
    share(uri, secret, shared, [name])
    log.info(
        "user %s created with EDIT on the experiments %s and the registered models %s",
        name,
        ", ".join(shared.experiments),
        ", ".join(shared.models),
    )
    return password
