"""Datasets: upload an archive (zip or tar in the dataset layout), list, get, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import DatasetId, RegistryDep, SettingsDep
from api.problems import ProblemError, problem_responses
from api.schemas import DatasetList, DatasetOut
from api.security.auth import authenticate
from api.security.ratelimit import limit
from api.uploads import MalformedUpload, receive_upload
from etm.datasets.archives import ArchiveLimits

router = APIRouter(
    prefix="/v1/datasets", tags=["datasets"],
    responses=problem_responses(401, 403, 503), dependencies=[Depends(authenticate)],
)

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A .zip or .tar(.gz/.bz2/.xz) archive of a dataset folder: "
                            "<class>/<image>, <split>/<class>/<image> or manifest.csv (split,label,path), "
                            "with optional masks/ (human-annotation masks matched by file stem). One "
                            "wrapper folder at the top is allowed.",
                        }
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    summary="Upload a dataset archive",
    description="Streams the archive to disk (limit ETM_MAX_DATASET_BYTES), extracts it safely (regular files "
    "and folders only; no absolute paths, '..', or links; bounded entries, bytes and compression ratio; hidden and "
    "non-image files are skipped and listed), validates every image and "
    "registers the dataset by content: the same images again answer 200 with the existing dataset.",
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": DatasetOut, "description": "This content was registered already"},
        **problem_responses(400, 413, 415, 429),
    },
    dependencies=[Depends(limit("uploads"))],
)
async def upload_dataset(
    request: Request, response: Response, settings: SettingsDep, registry: RegistryDep
) -> DatasetOut:
    try:
        upload = await receive_upload(request, "file", settings.max_dataset_bytes, settings.upload_dir, "dataset.zip")
    except MalformedUpload as exc:
        raise ProblemError(400, str(exc)) from exc
    limits = ArchiveLimits(settings.max_archive_members, settings.max_extracted_bytes, settings.max_compression_ratio)
    with upload:
        assert upload.path is not None
        record, created = await run_in_threadpool(
            registry.ingest_dataset,
            upload.path,
            upload.filename or upload.path.name,
            limits,
            upload.folder,
            settings.cache_dir,
        )
    response.status_code = 201 if created else 200
    if created:
        response.headers["Location"] = f"/v1/datasets/{record['id']}"
    return DatasetOut.model_validate(record)


@router.get("", response_model=DatasetList, summary="List datasets (built-ins first)")
def list_datasets(registry: RegistryDep) -> DatasetList:
    """The built-in datasets, then the tenant's uploads, with their splits, counts and annotations."""
    return DatasetList(items=[DatasetOut.model_validate(r) for r in registry.list_datasets()])


def _get(registry: RegistryDep, dataset_id: str) -> dict:
    rec = registry.get_dataset(dataset_id)
    if rec is None:
        raise ProblemError(404, f"no dataset {dataset_id!r}; list datasets at GET /v1/datasets")
    return rec


@router.get("/{dataset_id}", response_model=DatasetOut, summary="Get a dataset", responses=problem_responses(404))
def get_dataset(dataset_id: DatasetId, registry: RegistryDep) -> DatasetOut:
    """One dataset: its splits, image counts, masks and what the upload skipped and why."""
    return DatasetOut.model_validate(_get(registry, dataset_id))


@router.delete(
    "/{dataset_id}", status_code=204, summary="Delete an uploaded dataset", responses=problem_responses(404, 409)
)
def delete_dataset(dataset_id: DatasetId, registry: RegistryDep) -> Response:
    """Remove an uploaded dataset; a built-in answers 409 (it cannot be deleted). Finished reports stay."""
    _get(registry, dataset_id)
    registry.delete_dataset(dataset_id)
    return Response(status_code=204)
