"""Dependencies of the routes, as ``Annotated`` aliases (``SettingsDep``, ``JobsDep``, ...).

One ``Services`` object per app holds the clients; each is made on first use, so that building the
app (e.g. to export the OpenAPI document) needs no Redis.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any

import redis
from fastapi import Depends, Path, Request

from api.callbacks import CallbackSender
from api.inspection import worker_describe
from api.security.auth import Authenticator, authenticate
from api.security.keys import KeyStore, Principal
from api.security.ratelimit import FailureLimiter, RateLimiter
from etm.settings import Settings
from jobs.job_store import JobStore
from jobs.queue import APP_NAME, celery_config
from jobs.registry import Registry
from jobs.storage import ArtifactStore


class Services:
    """Clients shared by the routes of one app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.settings.redis_py_url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30
        )

    @cached_property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.settings.store_url)

    @cached_property
    def registry(self) -> Registry:
        registry = Registry(self.store)
        registry.describe = worker_describe(self, registry)  # a stale capability table: a worker re-inspects
        return registry

    @cached_property
    def jobs(self) -> JobStore:
        s = self.settings
        return JobStore(self.redis, self.store, s.key_prefix, s.job_ttl_seconds, s.report_ttl_seconds)

    @cached_property
    def keys(self) -> KeyStore:
        return KeyStore(self.store)

    @cached_property
    def authenticator(self) -> Authenticator:
        s = self.settings
        failures = None
        if s.auth == "keys":
            failures = FailureLimiter(
                self.redis, s.key_prefix, s.auth_failures_per_key_per_minute, s.auth_failures_per_address_per_minute
            )
        return Authenticator(s, self.keys, failures)

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.redis, self.settings.key_prefix)

    @cached_property
    def callbacks(self) -> CallbackSender:
        return CallbackSender(self.settings, self.jobs)

    @cached_property
    def celery(self) -> Any:
        """A producer of the workers' tasks, sent by name (``jobs.queue``); the API never imports the tasks."""
        from celery import Celery

        url = self.settings.celery_url
        app = Celery(APP_NAME, broker=url, backend=url)
        app.conf.update(celery_config(self.settings))
        return app

    def send_task(self, name: str, kwargs: dict[str, Any], *, queue: str, task_id: str) -> None:
        """``jobs.submit.Send`` through the Celery producer."""
        self.celery.send_task(name, kwargs=kwargs, queue=queue, task_id=task_id)


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_settings(request: Request) -> Settings:
    return request.app.state.services.settings


def get_jobs(request: Request) -> JobStore:
    return request.app.state.services.jobs


def get_registry(request: Request, principal: Annotated[Principal, Depends(authenticate)]) -> Registry:
    """The registry as the caller's tenant sees it (its uploads and the built-ins)."""
    return request.app.state.services.registry.for_tenant(principal.tenant)


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.services.store


PrincipalDep = Annotated[Principal, Depends(authenticate)]
ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
JobsDep = Annotated[JobStore, Depends(get_jobs)]
RegistryDep = Annotated[Registry, Depends(get_registry)]  # tenant-scoped: authenticates the request
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


# Path parameters, described once (the OpenAPI document and generated clients show these texts).
JobId = Annotated[str, Path(description="The job's id, as POST /v1/jobs answered it.")]
ModelId = Annotated[str, Path(description="A model id (POST /v1/models) or a built-in's, e.g. builtin:xent/run0.")]
DatasetId = Annotated[str, Path(description="A dataset id (POST /v1/datasets) or a built-in's, e.g. builtin:faces.")]
ArtifactName = Annotated[str, Path(description="An artifact's name, as GET /v1/jobs/{job_id}/artifacts lists it.")]
