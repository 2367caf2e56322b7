"""Who may do what on the team tracking server: MLflow's basic-auth app, the project's roles, credentials.

The registry is a code-execution path (scoring jobs, ``mlflow models serve`` and Spark executors run the
code of whatever version holds ``champion``), so the team server (``jobs/server.py``) runs MLflow's
``basic-auth`` app with ``default_permission = NO_PERMISSIONS``: a user sees and changes only what a role
granted. Roles (``ROLES``), granted per experiment and registered model by ``grant_role``:

- ``engineer``: EDIT on the project's experiments and registered models (train, sweep, register, gate,
  campaigns);
- ``reviewer``: READ on them (the UI, comparisons);
- ``scoring``: READ on the registered models and on the training experiments, whose run artifacts hold
  the model files (MLflow checks experiment READ before serving a proxied artifact), and EDIT on the
  scoring and monitoring experiments only (each scoring logs its report there); it cannot train, register
  or move an alias.

Credentials files use MLflow's own format (``~/.mlflow/credentials``: ``[mlflow]`` with
``mlflow_tracking_username`` / ``mlflow_tracking_password``), written 0600.
"""

from __future__ import annotations

import configparser
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import requests

from customer_value.errors import UserError

ADMIN = "admin"
PASSWORD_BYTES = 24  # token_urlsafe: 32 characters, 192 bits
# The experiments and registered models a role is granted on (the tracking config's names).
EXPERIMENTS = {
    "training": ("customer-clv", "customer-segments"),
    "scoring": ("customer-scoring", "customer-monitoring"),
    "campaigns": ("customer-campaigns",),
}
MODELS = ("customer-clv", "customer-segments")
ROLES: dict[str, dict[str, str]] = {  # what -> MLflow permission
    "engineer": {"training": "EDIT", "scoring": "EDIT", "campaigns": "EDIT", "models": "EDIT"},
    "reviewer": {"training": "READ", "scoring": "READ", "campaigns": "READ", "models": "READ"},
    "scoring": {"training": "READ", "scoring": "EDIT", "models": "READ"},
}
REQUEST_TIMEOUT_S = 30


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never the password, in a log or a traceback
        return f"Credentials(username={self.username!r}, password=***)"


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def write_credentials(path: Path, credentials: Credentials) -> None:
    """MLflow's credentials-file format, created 0600 (never readable by others, even for a moment)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = (
        "[mlflow]\n"
        f"mlflow_tracking_username = {credentials.username}\n"
        f"mlflow_tracking_password = {credentials.password}\n"
    )
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # new, 0600
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_credentials(path: Path) -> Credentials:
    """A credentials file as ``write_credentials`` (and MLflow) writes it; a UserError naming the file."""
    parser = configparser.ConfigParser()
    try:
        with open(path) as handle:
            parser.read_file(handle)
        section = parser["mlflow"]
        return Credentials(section["mlflow_tracking_username"], section["mlflow_tracking_password"])
    except OSError as exc:
        raise UserError(f"credentials file {path}: cannot be read ({exc.strerror})") from None
    except (KeyError, configparser.Error):
        raise UserError(
            f"credentials file {path}: needs an [mlflow] section with mlflow_tracking_username and "
            "mlflow_tracking_password"
        ) from None


def use_credentials_file(path: str | Path | None) -> None:
    """Let this process's MLflow client log in with the file's user, unless MLflow's own environment
    variables (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``) already name one: they win, as in MLflow."""
    if not path or os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return
    credentials = read_credentials(Path(path))
    os.environ["MLFLOW_TRACKING_USERNAME"] = credentials.username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = credentials.password


class AdminClient:
    """The basic-auth app's user and permission API, over HTTP, as the admin (or any MANAGE user)."""

    def __init__(self, uri: str, credentials: Credentials) -> None:
        self.uri = uri.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (credentials.username, credentials.password)

    def _call(self, method: str, path: str, **kwargs: object) -> dict:
        response = self.session.request(method, f"{self.uri}{path}", timeout=REQUEST_TIMEOUT_S, **kwargs)
        return self._checked(response, method, path)

    def _checked(self, response: requests.Response, method: str, path: str) -> dict:
        if response.status_code == 401:
            raise UserError(f"tracking server {self.uri} refused the admin credentials (HTTP 401)")
        if not response.ok:
            raise UserError(
                f"tracking server {self.uri}: {method} {path} answered HTTP {response.status_code}: "
                f"{response.text[:200]}"
            )
        return response.json() if response.content else {}

    def create_user(self, credentials: Credentials) -> None:
        self._call(
            "POST",
            "/api/2.0/mlflow/users/create",
            json={"username": credentials.username, "password": credentials.password},
        )

    def user_exists(self, username: str) -> bool:
        response = self.session.get(
            f"{self.uri}/api/2.0/mlflow/users/get", params={"username": username}, timeout=REQUEST_TIMEOUT_S
        )
        if response.status_code == 401:
            raise UserError(f"tracking server {self.uri} refused the admin credentials (HTTP 401)")
        return response.ok

    def update_password(self, credentials: Credentials, current: str | None = None) -> None:
        """Set ``credentials``' password; ``current``: the user's present one (changing one's own)."""
        body = {
            "username": credentials.username,
            "password": credentials.password,
            "current_password": current,
        }
        self._call("PATCH", "/api/2.0/mlflow/users/update-password", json=body)

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created (by the admin) when missing, so that it can be granted on."""
        response = self.session.get(
            f"{self.uri}/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": name},
            timeout=REQUEST_TIMEOUT_S,
        )
        if response.ok:
            return str(response.json()["experiment"]["experiment_id"])
        return str(
            self._call("POST", "/api/2.0/mlflow/experiments/create", json={"name": name})["experiment_id"]
        )

    def ensure_registered_model(self, name: str) -> None:
        response = self.session.get(
            f"{self.uri}/api/2.0/mlflow/registered-models/get",
            params={"name": name},
            timeout=REQUEST_TIMEOUT_S,
        )
        if not response.ok:
            self._call("POST", "/api/2.0/mlflow/registered-models/create", json={"name": name})

    def revoke(self, username: str, resource_type: str, resource_id: str) -> None:
        """Take ``username``'s permission on the resource away (nothing to take is fine)."""
        resource = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
        path = "/api/3.0/mlflow/users/permissions/revoke"
        response = self.session.post(f"{self.uri}{path}", json=resource, timeout=REQUEST_TIMEOUT_S)
        if response.status_code != 404 and "RESOURCE_DOES_NOT_EXIST" not in response.text:
            self._checked(response, "POST", path)

    def grant(self, username: str, resource_type: str, resource_id: str, permission: str) -> None:
        """Give ``username`` ``permission`` on the resource, replacing a permission it already had."""
        resource = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
        path = "/api/3.0/mlflow/users/permissions/grant"
        body = resource | {"permission": permission}
        response = self.session.post(f"{self.uri}{path}", json=body, timeout=REQUEST_TIMEOUT_S)
        if response.status_code == 400 and "RESOURCE_ALREADY_EXISTS" in response.text:
            self._call("POST", "/api/3.0/mlflow/users/permissions/revoke", json=resource)
            self._call("POST", path, json=body)
        else:
            self._checked(response, "POST", path)


def grant_role(client: AdminClient, username: str, role: str) -> list[str]:
    """Grant ``role``'s permissions to ``username`` (the project's experiments and registered models are
    created first when missing); returns one line per grant."""
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {sorted(ROLES)}")
    granted = []
    for group in set(EXPERIMENTS) - set(ROLES[role]):  # a role change takes away what the new role lacks
        for name in EXPERIMENTS[group]:
            client.revoke(username, "experiment", client.experiment_id(name))
    for group, permission in ROLES[role].items():
        if group == "models":
            for name in MODELS:
                client.ensure_registered_model(name)
                client.grant(username, "registered_model", name, permission)
                granted.append(f"{permission} on registered model {name}")
        else:
            for name in EXPERIMENTS[group]:
                client.grant(username, "experiment", client.experiment_id(name), permission)
                granted.append(f"{permission} on experiment {name}")
    return granted
