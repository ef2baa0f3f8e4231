"""One-line admin commands from the I/O thread (``cancel job H`` for futures and Ctrl-C)."""

from __future__ import annotations

import asyncio

from ..addresses import split_address

ADMIN_TIMEOUT = 10.0


async def admin_commands(address: str, lines: list[str]) -> list[str]:
    """Send single-reply admin commands, pipelined on one connection; return the replies."""
    if not lines:
        return []
    host, port = split_address(address)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), ADMIN_TIMEOUT)
    try:
        writer.write("".join(line + "\r\n" for line in lines).encode())
        await writer.drain()
        replies = []
        for _ in lines:
            line = await asyncio.wait_for(reader.readline(), ADMIN_TIMEOUT)
            if not line:
                break
            replies.append(line.decode(errors="replace").rstrip("\r\n"))
        return replies
    finally:
        writer.close()


async def cancel_jobs(address: str, handles: list[bytes]) -> list[bool]:
    """``cancel job`` each handle; True where the server dropped a queued job."""
    replies = await admin_commands(address, [f"cancel job {h.decode()}" for h in handles])
    return [reply == "OK" for reply in replies] + [False] * (len(handles) - len(replies))
