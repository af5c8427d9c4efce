"""Progress inside one salience call, for methods whose single call can take minutes (Score-CAM runs one
masked forward pass per channel and image): the caller installs a hook, the method reports its passes.

The evaluation's own progress moves once per batch; without this a long call says nothing until it ends
(Score-CAM on a ConvNeXt-T ONNX ran over 15 minutes for 8 images with no output). The sandbox child
forwards these as progress events of stage ``step:<method>``; ``etm`` shows them as a bar with elapsed and
remaining time, jobs as ``progress.step`` with ``eta_seconds``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

StepFn = Callable[[str, int, int], None]
STEP_PREFIX = "step:"
_hook: ContextVar[StepFn | None] = ContextVar("etm_salience_step", default=None)


def report_step(method: str, done: int, total: int) -> None:
    """Called by a method after each chunk of its work: ``done`` of ``total`` units (e.g. masked passes)."""
    hook = _hook.get()
    if hook is not None:
        hook(method, done, total)


@contextmanager
def step_reporting(fn: StepFn) -> Iterator[None]:
    """Send the salience calls made inside the block to ``fn(method, done, total)``."""
    token = _hook.set(fn)
    try:
        yield
    finally:
        _hook.reset(token)
