"""What a job may ask of its models, checked by one rule wherever it is checked: at admission (from the
registry's records) and when the evaluation loads the models (from the loaded ``Model``).

- ``require_method``: the salience method is available in the model's capability table (never
  substituted: the table's reason is the message).
- ``check_input_sizes``: the runs of one candidate share an input size, so their maps can be compared.
- ``target_index``: the job's ``target`` (``predicted``, a class index or a class name) as a class index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from etm.errors import BadInput, MethodUnavailable
from etm.models.base import Capability


def require_method(capabilities: Mapping[str, Capability], method: str, where: str | None = None) -> None:
    """MethodUnavailable, with the table's reason (after ``"<where>: "``), unless ``method`` is available."""
    cap = capabilities.get(method)
    if cap is None or not cap.available:
        reason = cap.reason if cap is not None else f"{method} is not available for this model"
        raise MethodUnavailable(f"{where}: {reason}" if where else reason)


def check_input_sizes(candidate: str, sizes: Iterable[Sequence[int]]) -> None:
    """BadInput when the runs of ``candidate`` do not all share one input size."""
    distinct = sorted({tuple(s) for s in sizes})
    if len(distinct) > 1:
        raise BadInput(
            f"candidate {candidate!r} mixes input sizes {distinct}; runs of one family must share the "
            "input size so their maps can be compared"
        )


def target_index(target: str | int, class_names: Sequence[str], classes: int, whose: str) -> int | None:
    """None for ``predicted``, else the class index a target names (an index, or one of ``class_names``).

    ``whose`` names the model(s) in the message, e.g. ``"the model's"`` or ``"candidate 'a''s"``.

    Raises:
        BadInput: a class name that is not one of ``class_names``, an index outside ``[0, classes)``.
    """
    if target == "predicted":
        return None
    names = list(class_names)
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in names:
            raise BadInput(f"target class {target!r} is not one of {whose} classes {names}")
        return names.index(target)
    idx = int(target)
    if not 0 <= idx < classes:
        raise BadInput(f"target class index {idx} is out of range for {whose} {classes} classes")
    return idx
