"""A real Jupyter kernel for the tests, started and driven through jupyter_client."""

from __future__ import annotations

import textwrap
import time
from typing import Any

CELL_TIMEOUT = 90  # seconds for one cell, kernel start included


class Kernel:
    def __init__(self) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel()  # inherits PYTHONPATH: this checkout's gearnb
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=CELL_TIMEOUT)

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

    def run(self, code: str) -> list[dict[str, Any]]:
        """Execute one cell, which must not fail; its IOPub messages up to idle."""
        messages = self.finish(self.start(code))
        errors = [m["content"] for m in messages if m["msg_type"] == "error"]
        assert not errors, errors
        return messages

    @staticmethod
    def text(messages: list[dict[str, Any]]) -> str:
        """What a cell printed (its stream output)."""
        return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)
