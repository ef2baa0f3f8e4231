"""pyexec: Python callables as jobs of one generic Gearman function, signed with the cluster key.

Modules: ``keys`` (the key and key files), ``signing`` (MACs binding calls and results),
``replay`` (the worker's seen-set and freshness rules), ``envelope`` (what a call and a result
hold), ``runner`` (the worker side).
"""

from .envelope import RemoteError, RemoteTraceback, VersionMismatch
from .keys import BadKey, create_key_file, load_key, new_key
from .runner import PYEXEC, PyexecRunner, report
from .signing import CallId, RefusedPayload, Signer

__all__ = ["PYEXEC", "BadKey", "CallId", "PyexecRunner", "RefusedPayload", "RemoteError", "RemoteTraceback",
           "Signer", "VersionMismatch", "create_key_file", "load_key", "new_key", "report"]
