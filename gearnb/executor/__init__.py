"""Executor and futures: Python callables on Gearman workers (the pyexec function)."""

from .executor import Executor
from .futures import GearnbFuture

__all__ = ["Executor", "GearnbFuture"]
