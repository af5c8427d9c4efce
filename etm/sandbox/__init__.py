"""The trust boundary around uploaded models: every model load and run happens in a confined child.

A model file is a program (``torch.export``'s deserializer evaluates strings, ONNX graphs loop and
touch files), so validation (``etm.models``) is only the first layer; this package is the one
that holds. ``run`` starts ``etm.sandbox.child`` under bubblewrap (``etm.sandbox.bwrap``) with
CPU, memory and wall-clock limits, relays progress, kills it on cancel, and returns the files it
wrote. ``limits_for`` reads the budgets from the settings. docs/SECURITY.md has the threat model.
"""

from __future__ import annotations

from typing import Literal

from etm.cache_paths import INDEX_HOME_ENV, index_home
from etm.sandbox.bwrap import SandboxUnavailable
from etm.sandbox.runner import Limits, Outcome, SandboxCrashed, SandboxTimeout, run
from etm.settings import Settings

__all__ = [
    "Limits",
    "Outcome",
    "SandboxCrashed",
    "SandboxTimeout",
    "SandboxUnavailable",
    "limits_for",
    "run",
]


def limits_for(settings: Settings, kind: Literal["inspect", "job"], gpu: bool = False) -> Limits:
    """Budgets of a sandboxed run: uploads get ``sandbox_inspect_seconds``, jobs the task soft time limit (plus
    a few seconds, so that in a worker Celery's own soft limit ends the task first, with its message; the
    sandbox's deadline is the backstop there and the limit of local ``etm`` runs)."""
    wall = float(settings.sandbox_inspect_seconds if kind == "inspect" else settings.task_soft_time_limit + 5)
    return Limits(
        wall_seconds=wall,
        cpu_seconds=int(wall * 2 * max(1, settings.torch_threads)) + 30,  # threads beside the intra-op ones
        memory_bytes=0 if gpu else settings.sandbox_memory_bytes,
        threads=settings.torch_threads,
        settings_env=(
            ("ETM_MAX_IMAGE_PIXELS", str(settings.max_image_pixels)),
            ("ETM_ORT_ARENA_MAX_BYTES", str(settings.ort_arena_max_bytes)),
            ("ETM_PLUGINS", settings.plugins),  # the model process must know the plugins' measures and methods
            (INDEX_HOME_ENV, str(index_home())),  # where the datasets' validation indexes are (read-only there)
        ),
    )
