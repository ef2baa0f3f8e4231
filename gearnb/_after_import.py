"""Run a function once a module has been imported, without importing it: a one-shot
post-import hook (a finder at the front of ``sys.meta_path`` whose loader runs the function
right after the module's own code).

gearnb registers its joblib backend this way (``gearnb/__init__.py``): importing joblib costs
about as much as importing gearnb itself (~160 ms, most of it numpy), and worker processes and
the command line never need it, while a notebook that imports gearnb first and scikit-learn
later still finds ``backend="gearnb"``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types
from typing import Any, Callable

log = logging.getLogger("gearnb")


def call_after_import(module_name: str, fn: Callable[[], Any]) -> None:
    """``fn()`` now if the top-level module ``module_name`` is imported already, else right
    after its first import has run. An exception in ``fn`` is logged, never raised into the
    code that imported the module."""
    if module_name in sys.modules:
        _call(fn, module_name)
    else:
        sys.meta_path.insert(0, _AfterImportFinder(module_name, fn))


def _call(fn: Callable[[], Any], module_name: str) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the importer must not fail because of gearnb
        log.warning("gearnb: %s was imported, but %s failed: %s", module_name,
                    getattr(fn, "__name__", fn), exc)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for its module it asks the other finders and wraps the loader."""

    def __init__(self, module_name: str, fn: Callable[[], Any]) -> None:
        self.module_name = module_name
        self.fn = fn

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.module_name:
            return None
        try:  # one shot; out of the way before the other finders are asked
            sys.meta_path.remove(self)
        except ValueError:
            return None
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ThenLoader(spec.loader, self.fn, fullname)
        return spec


class _ThenLoader(importlib.abc.Loader):
    """The module's own loader, then ``fn``. The module keeps its own loader in
    ``__loader__`` and ``__spec__.loader``, as if nothing had come between."""

    def __init__(self, loader: Any, fn: Callable[[], Any], module_name: str) -> None:
        self.loader = loader
        self.fn = fn
        self.module_name = module_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _call(self.fn, self.module_name)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, get_resource_reader...
        return getattr(self.loader, name)
