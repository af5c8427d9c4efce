"""Built-in model families (the benchmark's training recipes)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import RegistryDep
from api.problems import problem_responses
from api.schemas import Family, FamilyList
from api.security.auth import authenticate
from jobs.builtins import families

router = APIRouter(
    prefix="/v1/families", tags=["models"],
    responses=problem_responses(401, 403, 503), dependencies=[Depends(authenticate)],
)


@router.get(
    "",
    response_model=FamilyList,
    summary="List built-in model families",
    description="Each family's model ids in run order; use them as a candidate's models as they are.",
)
def list_families(registry: RegistryDep) -> FamilyList:
    return FamilyList(items=[Family(**f) for f in families(registry.list_models())])
