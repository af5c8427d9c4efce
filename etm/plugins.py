"""Plugins: modules that register measures and salience methods of their own, named in ``ETM_PLUGINS``.

``ETM_PLUGINS`` is a comma-separated list of importable module names (e.g. ``tests.toys``). Each is imported
once per process, when a registry is first read (``etm.measures`` on import, the salience registry on first
use), so the API, the workers and the sandboxed model process all see the same measures and methods: the
sandbox passes the variable on (``etm.sandbox.limits_for``). A plugin registers with the very calls the
built-ins use: ``etm.measures.register_measure`` and ``etm.salience.registry.register``. Plugins are code the
operator installs, as trusted as the service itself; job submitters cannot name one.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

ENV = "ETM_PLUGINS"
_loaded: set[str] = set()


def plugin_modules() -> list[str]:
    """The module names ``ETM_PLUGINS`` lists (empty entries and spaces ignored)."""
    return [m.strip() for m in os.environ.get(ENV, "").split(",") if m.strip()]


def plugin_paths() -> list[Path]:
    """The files or package folders of the plugins' top-level packages, which the sandboxed model process must be
    able to read (it sees the ``etm`` package and the Python environment only; see ``etm.sandbox.bwrap``)."""
    out = []
    for name in plugin_modules():
        spec = importlib.util.find_spec(name.split(".")[0])
        if spec is None:
            continue  # load_plugins names it
        if spec.submodule_search_locations:
            out += [Path(p).resolve() for p in spec.submodule_search_locations]
        elif spec.origin:
            out.append(Path(spec.origin).resolve())
    return out


def load_plugins() -> list[str]:
    """Import every plugin module not imported yet; returns the names listed.

    Raises:
        ImportError: a listed module cannot be imported (a misconfigured service should not start).
    """
    names = plugin_modules()
    for name in names:
        if name not in _loaded:
            _loaded.add(name)  # first: a plugin that imports a registry must not re-enter here
            try:
                importlib.import_module(name)
            except Exception:
                _loaded.discard(name)
                raise
    return names
