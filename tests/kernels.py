"""A real Jupyter kernel for the tests, started and driven through jupyter_client.

``Kernel()`` starts the default ``python3`` kernel; the browser tests pass the name, folder and
working directory of their own kernel specs (one per ipykernel major version). A cell is
started (:meth:`Kernel.start`) and its IOPub messages read up to its idle
(:meth:`Kernel.finish`); :meth:`Kernel.execute` and :meth:`Kernel.run` do both and require the
cell not to fail.
"""

from __future__ import annotations

import contextlib
import textwrap
import time
from typing import Any

CELL_TIMEOUT = 90  # seconds for one cell, kernel start included


class Kernel:
    def __init__(self, kernel_name: str = "python3", *, kernel_dirs: list[str] | None = None,
                 cwd: str | None = None) -> None:
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        options: dict[str, Any] = {"kernel_name": kernel_name}
        if kernel_dirs is not None:
            options["kernel_spec_manager"] = KernelSpecManager(kernel_dirs=kernel_dirs)
        self.km = KernelManager(**options)
        self.km.start_kernel(**({} if cwd is None else {"cwd": cwd}))  # inherits PYTHONPATH: this checkout's gearnb
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=CELL_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def start(self, code: str) -> str:
        """Start executing one cell; returns its message id (see :meth:`finish`)."""
        return self.kc.execute(textwrap.dedent(code))

    def finish(self, msg_id: str, timeout: float = CELL_TIMEOUT) -> list[dict[str, Any]]:
        """The IOPub messages of cell ``msg_id`` up to its idle (what the kernel sent meanwhile)."""
        deadline = time.monotonic() + timeout
        messages = []
        while True:
            msg = self.kc.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.1))
            messages.append(msg)
            if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                    and msg["parent_header"].get("msg_id") == msg_id):
                return messages

    def execute(self, code: str, timeout: float = CELL_TIMEOUT) -> tuple[str, list[dict[str, Any]]]:
        """Execute one cell, which must not fail: its message id and IOPub messages up to idle."""
        msg_id = self.start(code)
        messages = self.finish(msg_id, timeout)
        errors = [m["content"] for m in messages if m["msg_type"] == "error"]
        assert not errors, errors
        return msg_id, messages

    def run(self, code: str, timeout: float = CELL_TIMEOUT) -> list[dict[str, Any]]:
        """:meth:`execute`, for a caller that needs only the messages."""
        return self.execute(code, timeout)[1]

    @staticmethod
    def text(messages: list[dict[str, Any]]) -> str:
        """What a cell printed (its stream output)."""
        return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)  # lets the kernel stop its local cluster
