"""The function of a submit or map, pickled once, with the user's own modules by value.

:func:`function_blob` is the one place the executor pickles a function: first the imported
user modules are registered to travel by value (:mod:`gearnb.pyexec.usercode`, which states
the rule), then the function is pickled; if something it refers to through such a module does
not pickle by value, it is pickled again with those modules by reference, and a warning says so.
"""

from __future__ import annotations

import logging
from typing import Any

from ..pyexec.envelope import FunctionBlob
from ..pyexec.usercode import by_reference, ship_user_modules

log = logging.getLogger("gearnb.executor")


def function_blob(fn: Any) -> FunctionBlob:
    ship_user_modules()
    try:
        return FunctionBlob(fn)
    except Exception as by_value_error:  # noqa: BLE001 - tried again by reference below
        with by_reference():
            blob = FunctionBlob(fn)  # raises, to the caller, if it does not pickle at all
        log.warning("%s refers to something of your modules that does not pickle by value (%s); it goes "
                    "by reference, so the workers import those modules from their own files",
                    getattr(fn, "__name__", fn), by_value_error)
        return blob
