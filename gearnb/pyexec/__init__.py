"""pyexec: Python callables as jobs of one generic Gearman function, signed with the cluster key."""

from .envelope import RemoteError, RemoteTraceback, VersionMismatch
from .keys import RefusedPayload, Signer, load_key, new_key
from .runner import PYEXEC, PyexecRunner, report

__all__ = ["PYEXEC", "PyexecRunner", "RefusedPayload", "RemoteError", "RemoteTraceback", "Signer",
           "VersionMismatch", "load_key", "new_key", "report"]
