"""Fresh code on the workers: the user's own modules reach them as the caller has them.

A *user module* is a module whose source is a ``.py`` file outside the interpreter's installed
locations (its standard library and site-packages): a module next to the notebook, in a folder
the notebook put on ``sys.path``, or in a package installed in editable mode. gearnb itself
never is one (the workers run their own gearnb).

Caller side, :func:`ship_user_modules` (before a function is pickled, each submit and map):
every imported user module is registered with cloudpickle's ``register_pickle_by_value``, so
functions, classes and module references from it travel *by value*, as cloudpickle always
sends what a notebook defines: the workers run the caller's version as of the submit, whatever
their own files say, and never mix it with a copy a task process imported earlier. A new or
edited function shows up on the workers once the caller has it (``importlib.reload``, or
``%autoreload``); an edit on disk that the notebook has not loaded does not reach them either.
A function whose module holds something that does not pickle by value (a lock, a connection it
uses) is sent by reference instead, with a warning: the workers then import that module by name.

Worker side, :class:`ModuleWatch` (in the task process that lives across jobs; after each job
it notes the user modules just imported and their files' signatures, before each job it
compares): a user module that a task imported *by name* - an ``import`` statement run inside the
task, or a function sent by reference - and whose file has changed since is dropped from
``sys.modules`` (and the runner drops the functions it unpickled), so the next import reads
the file again: a task process never keeps running an old copy of an edited file.
"""

from __future__ import annotations

import logging
import os
import site
import sys
import sysconfig
import threading
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Iterator

import cloudpickle

log = logging.getLogger("gearnb.pyexec")

_OWN = "gearnb"
_installed: tuple[str, ...] | None = None


def installed_locations() -> tuple[str, ...]:
    """Folders (with a trailing separator) whose modules are installed, not the user's."""
    global _installed
    if _installed is None:
        paths = set(sysconfig.get_paths().values())
        try:
            paths.update(site.getsitepackages())
        except AttributeError:  # some virtualenvs' site module
            pass
        user_site = getattr(site, "getusersitepackages", lambda: None)()
        if user_site:
            paths.add(user_site)
        paths.update({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})
        roots = {os.path.join(os.path.abspath(p), "") for p in paths if p}
        roots |= {os.path.join(os.path.realpath(p), "") for p in paths if p}
        _installed = tuple(sorted(roots))
    return _installed


def user_module_file(module: Any) -> str | None:
    """The source file of ``module`` if it is a user module (see the module docstring)."""
    name = getattr(module, "__name__", None)
    if not isinstance(module, ModuleType) or not isinstance(name, str) or name == "__main__":
        return None
    if name == _OWN or name.startswith(_OWN + "."):
        return None
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return None  # built in, an extension module (C code pickles by reference only), a namespace
    installed = installed_locations()
    if os.path.abspath(file).startswith(installed):  # most modules: no realpath() needed
        return None
    path = os.path.realpath(file)
    return None if path.startswith(installed) else path


# -- caller side ---------------------------------------------------------------------------------
_lock = threading.Lock()
_shipped: set[str] = set()  # module names registered by value
_looked_at: set[str] = set()  # module names classified already
_modules_seen = 0  # len(sys.modules) at the last scan: new imports make it move


def ship_user_modules() -> None:
    """Register every imported user module with cloudpickle's ``register_pickle_by_value``
    (once per module; a scan only when new modules were imported since the last)."""
    global _modules_seen
    if len(sys.modules) == _modules_seen:
        return
    with _lock:
        _modules_seen = len(sys.modules)
        for name, module in list(sys.modules.items()):
            if name in _looked_at:
                continue
            _looked_at.add(name)
            if user_module_file(module) is not None:
                try:
                    cloudpickle.register_pickle_by_value(module)
                except (ValueError, TypeError):  # not importable under its name: by reference
                    continue
                _shipped.add(name)
                log.debug("user module %s travels by value", name)


def shipped_modules() -> set[str]:
    with _lock:
        return set(_shipped)


@contextmanager
def by_reference() -> Iterator[None]:
    """Pickle user modules by reference meanwhile (for what does not pickle by value)."""
    with _lock:
        names = [n for n in _shipped if n in sys.modules]
        for name in names:
            cloudpickle.unregister_pickle_by_value(sys.modules[name])
        try:
            yield
        finally:
            for name in names:
                if name in sys.modules:
                    cloudpickle.register_pickle_by_value(sys.modules[name])


# -- worker side ---------------------------------------------------------------------------------
_MTIME_SLACK_NS = 1_000_000_000  # file times come from a coarse clock: lean to importing again


def _signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class ModuleWatch:
    """The user modules a task process imported by name, and whether their files changed."""

    def __init__(self) -> None:
        self._looked_at: set[str] = set()
        self._files: dict[str, tuple[str, tuple[int, int] | None]] = {}  # name -> (path, signature)
        self._count = 0

    def note_imported(self, since_ns: int | None = None) -> None:
        """Record the file signature of user modules imported since the last call. Called after
        each job: a signature taken later (before the next job) could already be the edited
        file's, and the old module would be kept. A file written since ``since_ns`` (the job's
        start, less the file clock's slack) may have changed after the job imported it: its
        signature is left unknown, so the next job imports it again."""
        if len(sys.modules) == self._count:
            return
        for name, module in list(sys.modules.items()):
            if name in self._looked_at:
                continue
            self._looked_at.add(name)
            path = user_module_file(module)
            if path is not None:
                signature = _signature(path)
                if since_ns is not None and signature is not None and signature[0] >= since_ns - _MTIME_SLACK_NS:
                    # Written while the job that imported it ran: what was imported may be the
                    # file before the edit. Unknown signature: the next job imports it again.
                    signature = (-1, -1)
                self._files[name] = (path, signature)
        self._count = len(sys.modules)

    def drop_changed(self) -> list[str]:
        """Drop from ``sys.modules`` the user modules whose file changed since they were
        imported; returns their names (a few stat calls a job: one per user module)."""
        self.note_imported()
        changed = [name for name, (path, sig) in self._files.items() if _signature(path) != sig]
        for name in changed:
            del self._files[name]
            self._looked_at.discard(name)
            sys.modules.pop(name, None)
        if changed:
            self._count = len(sys.modules)
            log.info("dropped modules whose files changed, to import them again: %s", ", ".join(changed))
        return changed
