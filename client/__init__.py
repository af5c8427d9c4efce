"""Explain-to-Me client: a typed Python client of the REST API (``Client``, ``AsyncClient`` in ``client.http``;
each endpoint written once in ``client.endpoints``), CI gates (``client.gate``), MLflow logging
(``client.mlflow_log``) and the ``etm`` command (``client.cli``, exit codes in ``client.exit_codes``).

Depends on httpx only (plus tqdm for progress bars, mlflow for ``mlflow-log``); it does not import the
domain, so it installs and runs where no model ever does.
"""

from client.endpoints import job_body
from client.errors import ApiError, ConnectionFailed, EtmError, JobFailed, WaitTimeout
from client.gate import GateResult, Requirement, RequirementError, evaluate, parse_requirement, parse_requirements
from client.http import AsyncClient, Client
from client.retry import NO_RETRY, RetryEvent, RetryPolicy
from client.types import (
    Artifact,
    Comparison,
    Dataset,
    Family,
    Job,
    Leaderboard,
    MeasureRanking,
    Model,
    PairedDifference,
    Progress,
    RankEntry,
    Report,
)

__all__ = [
    "ApiError",
    "Artifact",
    "AsyncClient",
    "Client",
    "Comparison",
    "ConnectionFailed",
    "Dataset",
    "EtmError",
    "Family",
    "GateResult",
    "Job",
    "JobFailed",
    "Leaderboard",
    "MeasureRanking",
    "Model",
    "NO_RETRY",
    "PairedDifference",
    "Progress",
    "RankEntry",
    "Report",
    "Requirement",
    "RequirementError",
    "RetryEvent",
    "RetryPolicy",
    "WaitTimeout",
    "evaluate",
    "job_body",
    "parse_requirement",
    "parse_requirements",
]
