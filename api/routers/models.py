"""Models: upload (ONNX or torch.export .pt2), list, get, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import ModelId, RegistryDep, ServicesDep, SettingsDep
from api.inspection import worker_describe
from api.problems import ProblemError, problem_responses
from api.schemas import ModelList, ModelOut
from api.security.auth import authenticate
from api.security.ratelimit import limit
from api.uploads import MalformedUpload, receive_upload
from etm.models.metadata import ModelMetadata

router = APIRouter(
    prefix="/v1/models", tags=["models"],
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
                            "description": "An .onnx file or a torch.export .pt2 program. Pickles, torch.save "
                            "checkpoints and TorchScript are refused (they can run code).",
                        },
                        "metadata": {
                            "type": "string",
                            "description": "Optional JSON object: input_size, channel_order, mean, std, "
                            "class_names, positive_class, score_activation, input_layout (ONNX: NCHW or NHWC), output "
                            "(ONNX: the output with the class scores). Overrides what the file carries.",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    summary="Upload a model",
    description="Streams the file to disk (limit ETM_MAX_MODEL_BYTES), has a worker inspect it in its sandbox "
    "(format checks, capability table, a probe run; the API never loads a model) and registers it by content: "
    "the same bytes again answer 200 with the existing model. 503 when no worker answers within "
    "ETM_INSPECT_WAIT_SECONDS.",
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": ModelOut, "description": "These bytes were registered already"},
        **problem_responses(400, 409, 413, 415, 429),
    },
    dependencies=[Depends(limit("uploads"))],
)
async def upload_model(
    request: Request, response: Response, settings: SettingsDep, registry: RegistryDep, services: ServicesDep
) -> ModelOut:
    try:
        upload = await receive_upload(request, "file", settings.max_model_bytes, settings.upload_dir, "model.onnx")
    except MalformedUpload as exc:
        raise ProblemError(400, str(exc)) from exc
    with upload:
        meta = None
        if upload.fields.get("metadata", "").strip():
            try:
                meta = ModelMetadata.from_json_text(upload.fields["metadata"], "the metadata field")
            except ValueError as exc:
                raise ProblemError(422, f"bad metadata: {exc}", slug="bad-metadata") from exc
        assert upload.path is not None
        record, created = await run_in_threadpool(
            registry.ingest_model,
            upload.path,
            upload.filename or upload.path.name,
            meta,
            describe=worker_describe(services, registry),
        )
    response.status_code = 201 if created else 200
    if created:
        response.headers["Location"] = f"/v1/models/{record['id']}"
    return ModelOut.model_validate(record)


@router.get("", response_model=ModelList, summary="List models (built-ins first)")
def list_models(registry: RegistryDep) -> ModelList:
    """The built-in models, then the tenant's uploads, each with its metadata and capability table."""
    return ModelList(items=[ModelOut.model_validate(r) for r in registry.list_models()])


def _get(registry: RegistryDep, model_id: str, refresh: bool = True) -> dict:
    rec = registry.get_model(model_id, refresh=refresh)
    if rec is None:
        raise ProblemError(404, f"no model {model_id!r}; list models at GET /v1/models")
    return rec


@router.get("/{model_id:path}", response_model=ModelOut, summary="Get a model", responses=problem_responses(404))
def get_model(model_id: ModelId, registry: RegistryDep) -> ModelOut:
    """One model: format, metadata, which salience methods it can run and why not, warnings."""
    return ModelOut.model_validate(_get(registry, model_id))


@router.delete(
    "/{model_id:path}", status_code=204, summary="Delete an uploaded model", responses=problem_responses(404, 409)
)
def delete_model(model_id: ModelId, registry: RegistryDep) -> Response:
    """Remove an uploaded model; a built-in answers 409 (it cannot be deleted). Finished reports stay."""
    _get(registry, model_id, refresh=False)  # no inspection of a model about to go
    registry.delete_model(model_id)
    return Response(status_code=204)
