"""The exported job folder's files as pydantic models (meta.json, config_fed_server.json, config_fed_client.json)."""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..apis.fl_constant import JobConstants, SiteType
from ..errors import ConfigError


class ComponentConfig(BaseModel):
    """A component recorded as its class path and constructor arguments."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    path: str
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _dotted(cls, v: str) -> str:
        if "." not in v:
            raise ValueError(f"path {v!r} must be 'module.Class'")
        return v


class ExecutorConfig(BaseModel):
    """An executor and the task names it handles (``*`` = every task)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    tasks: list[str] = Field(default_factory=lambda: ["*"])
    executor: ComponentConfig


class ServerAppConfig(BaseModel):
    """config_fed_server.json."""

    model_config = ConfigDict(extra="allow")

    format_version: int = 2
    workflows: list[ComponentConfig] = Field(default_factory=list)
    components: list[ComponentConfig] = Field(default_factory=list)
    task_data_filters: list[Any] = Field(default_factory=list)
    task_result_filters: list[Any] = Field(default_factory=list)


class ClientAppConfig(BaseModel):
    """config_fed_client.json."""

    model_config = ConfigDict(extra="allow")

    format_version: int = 2
    executors: list[ExecutorConfig] = Field(default_factory=list)
    components: list[ComponentConfig] = Field(default_factory=list)
    task_data_filters: list[Any] = Field(default_factory=list)
    task_result_filters: list[Any] = Field(default_factory=list)


class JobMeta(BaseModel):
    """meta.json: the job's name, its apps and where each is deployed."""

    model_config = ConfigDict(extra="allow")

    name: str
    resource_spec: dict[str, Any] = Field(default_factory=dict)
    min_clients: int = 1
    mandatory_clients: list[str] | None = None
    deploy_map: dict[str, list[str]]

    @field_validator("deploy_map")
    @classmethod
    def _non_empty(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        if not v:
            raise ValueError("deploy_map is empty: no app is deployed anywhere")
        return v


class AppFolder(BaseModel):
    """One app folder of a job: its configs (None where the app has no such side) and its custom/ path."""

    name: str
    path: str
    server: ServerAppConfig | None = None
    client: ClientAppConfig | None = None

    @property
    def custom_dir(self) -> str:
        """The app's custom/ folder (user code)."""
        return os.path.join(self.path, "custom")


class JobDefinition(BaseModel):
    """A whole job folder, loaded and validated."""

    folder: str
    meta: JobMeta
    apps: dict[str, AppFolder]

    def app_for(self, site: str) -> AppFolder:
        """Return the app deployed to ``site`` (a named entry first, then ``@ALL``)."""
        for app_name, sites in self.meta.deploy_map.items():
            if site in sites:
                return self.apps[app_name]
        for app_name, sites in self.meta.deploy_map.items():
            if SiteType.ALL in sites:
                return self.apps[app_name]
        raise ConfigError(f"job {self.meta.name!r}: no app is deployed to {site!r} (deploy_map {self.meta.deploy_map})")

    def named_clients(self) -> list[str]:
        """Return the client names the deploy_map names explicitly (sorted as given)."""
        names: list[str] = []
        for sites in self.meta.deploy_map.values():
            for s in sites:
                if s not in (SiteType.SERVER, SiteType.ALL) and s not in names:
                    names.append(s)
        return names

    def deploys_to_all(self) -> bool:
        """True when some app is deployed to ``@ALL``."""
        return any(SiteType.ALL in sites for sites in self.meta.deploy_map.values())


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"missing job file {path}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc


def _validate(model: type[BaseModel], data: Any, path: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a valid {model.__name__}:\n{exc}") from exc


def load_job(folder: str) -> JobDefinition:
    """Read and validate a job folder (meta.json plus its app folders).

    Raises:
        ConfigError: a file is missing, is not JSON, or does not match its model.
    """
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise ConfigError(f"job folder {folder} does not exist")
    meta_path = os.path.join(folder, JobConstants.META_FILE)
    meta = _validate(JobMeta, _read_json(meta_path), meta_path)
    apps: dict[str, AppFolder] = {}
    for app_name, sites in meta.deploy_map.items():
        app_path = os.path.join(folder, app_name)
        if not os.path.isdir(app_path):
            raise ConfigError(f"{meta_path}: deploy_map names app {app_name!r} but {app_path} does not exist")
        config_dir = os.path.join(app_path, "config")
        server_path = os.path.join(config_dir, JobConstants.SERVER_JOB_CONFIG)
        client_path = os.path.join(config_dir, JobConstants.CLIENT_JOB_CONFIG)
        app = AppFolder(name=app_name, path=app_path)
        if os.path.exists(server_path):
            app.server = _validate(ServerAppConfig, _read_json(server_path), server_path)
        if os.path.exists(client_path):
            app.client = _validate(ClientAppConfig, _read_json(client_path), client_path)
        wants_server = SiteType.SERVER in sites or SiteType.ALL in sites
        wants_client = any(s != SiteType.SERVER for s in sites)
        if wants_server and app.server is None:
            raise ConfigError(
                f"app {app_name!r} is deployed to the server but has no config/{JobConstants.SERVER_JOB_CONFIG}"
            )
        if wants_client and app.client is None:
            raise ConfigError(
                f"app {app_name!r} is deployed to clients but has no config/{JobConstants.CLIENT_JOB_CONFIG}"
            )
        apps[app_name] = app
    return JobDefinition(folder=folder, meta=meta, apps=apps)
