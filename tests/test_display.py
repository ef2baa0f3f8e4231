"""Rich display (_repr_html_) and the `gearnb status` table, from a real cluster."""

from __future__ import annotations

import subprocess
import sys

import gearnb


def test_executor_and_future_html_refresh():
    with gearnb.local(workers=1) as ex:
        html = ex._repr_html_()
        assert ex.servers[0] in html and "pyexec" in html and "local-0" in html
        assert str(ex.worker_pids()[0]) in html
        future = ex.submit(pow, 2, 5)
        assert future.result(30) == 32
        page = future._repr_html_()
        assert "finished" in page and "pow" in page and "H:" in page and " ms" in page
        failed = ex.submit(divmod, 1, 0)
        failed.exception(30)
        assert "error: ZeroDivisionError" in failed._repr_html_()
        # Re-evaluating the executor asks the server again: a queued job shows up.
        slow = [ex.submit(__import__("time").sleep, 0.5) for _ in range(3)]
        html = ex._repr_html_()
        assert "<td" in html
        for f in slow:
            f.result(30)


def test_gearnb_status_prints_a_table():
    with gearnb.local(workers=1) as ex:
        out = subprocess.run([sys.executable, "-m", "gearnb", "status", "--servers", ex.servers[0]],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.strip().splitlines()
    assert header.split() == ["SERVER", "FUNCTION", "QUEUED", "RUNNING", "WORKERS"]
    assert any(r.split()[1:] == ["pyexec", "0", "0", "1"] for r in rows)


def test_gearnb_status_explains_an_unreachable_server():
    out = subprocess.run([sys.executable, "-m", "gearnb", "status", "--servers", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "cannot connect" in out.stderr
