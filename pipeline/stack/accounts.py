"""MLflow accounts on the stack's server: users, and their write access to the project's shared experiments.

basic-auth gives every user READ on what others created (``default_permission``),
so one member cannot write into another's experiment (403). The project's
experiments (one per dataset, and pretraining) are created by the admin and
each member is granted EDIT on them: the whole team logs pipeline runs there,
while a personal experiment stays its creator's.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from pipeline.errors import PipelineError
from pipeline.stack.layout import ADMIN, Layout

log = logging.getLogger(__name__)


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


def share_experiments(uri: str, secret: Mapping[str, str], names: Iterable[str], users: Iterable[str]) -> dict[str, str]:
    """Create each shared experiment as the admin if missing, and grant every user EDIT on it; name -> experiment id."""
    import mlflow
    from mlflow.exceptions import RestException
    from mlflow.server import get_app_client

    with as_user(uri, ADMIN, secret["admin_password"]):
        client = mlflow.MlflowClient(uri)
        ids = {}
        for name in names:
            found = client.get_experiment_by_name(name)
            ids[name] = found.experiment_id if found else client.create_experiment(name)
        auth = get_app_client("basic-auth", tracking_uri=uri)
        for user in users:
            for experiment_id in ids.values():
                try:
                    auth.grant_user_permission(user, "experiment", experiment_id, "EDIT")
                except RestException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # granted by an earlier `up`
                        raise
    return ids


def add_user(layout: Layout, uri: str, secret: Mapping[str, str], name: str, shared: Iterable[str]) -> str:
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
    layout.users.write_text(json.dumps(users) + "\n")
    share_experiments(uri, secret, shared, [name])
    log.info("user %s created with EDIT on the experiments %s", name, ", ".join(shared))
    return password
