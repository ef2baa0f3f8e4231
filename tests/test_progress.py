"""Progress: the tracker's numbers, the terminal line, and quiet logs."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from types import SimpleNamespace

from gearnb.progress import ProgressTracker, describe, make_progress
from gearnb.progress import tracker as tracker_module
from gearnb.progress.text import TextView


class Recording:
    def __init__(self):
        self.drawn = []
        self.closed = None

    def draw(self, snapshot):
        self.drawn.append(snapshot)

    def close(self, snapshot):
        self.closed = snapshot


def test_tracker_counts_and_throttles(monkeypatch):
    # The tracker's clock is ours: how long the loop below takes (a loaded machine may stop this
    # thread for a tenth of a second in it) must not change how many redraws are counted.
    now = [1000.0]
    monkeypatch.setattr(tracker_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    view = Recording()
    tracker = ProgressTracker(view, total=10, label="f", workers=2)
    tracker.submitted(10)
    tracker.status(None, 1, 4)
    tracker.finished(3, failed=1)
    tracker.tick(force=True)
    for _ in range(100):
        tracker.tick()  # throttled: at most 10 a second
        now[0] += 0.0005  # 100 ticks in 50 ms
    assert len(view.drawn) == 1
    now[0] += 0.049  # a tenth of a second after the first draw, less a millisecond
    tracker.tick()
    assert len(view.drawn) == 1
    now[0] += 0.002  # past it: the next tick draws again
    tracker.tick()
    tracker.tick()
    assert len(view.drawn) == 2
    s = view.drawn[0]
    assert (s.done, s.failed, s.total, s.in_flight, s.running, s.queued) == (3, 1, 10, 7, 2, 5)
    assert s.tasks == [("?", 1, 4)]
    tracker.close()
    assert view.closed.finished and "3/10 done" in describe(view.closed) and "1 failed" in describe(view.closed)


def test_text_view_draws_one_line():
    stream = io.StringIO()
    tracker = ProgressTracker(TextView(stream), total=4, label="sweep", workers=1)
    tracker.submitted(4)
    tracker.finished(4)
    tracker.tick(force=True)
    tracker.close()
    out = stream.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n")
    assert "sweep [########################] 4/4 done" in out


def test_no_progress_when_not_a_terminal_or_turned_off():
    assert make_progress(False, total=1, label="x", workers=1) is None
    script = textwrap.dedent("""
        from gearnb.progress import make_progress
        print(make_progress(None, total=1, label="x", workers=1))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "None" and out.stderr == ""  # stderr is a pipe: nothing in logs


def test_map_shows_the_line_when_asked(tmp_path):
    script = textwrap.dedent("""
        import gearnb
        with gearnb.local(workers=1) as ex:
            print(len(ex.gmap(abs, range(50), chunksize=5, progress=True)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "50"
    assert "abs [" in out.stderr and "50/50 done" in out.stderr


def test_demo_runs_calculus_and_sweep():
    out = subprocess.run([sys.executable, "-m", "gearnb", "demo"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for line in ("2+3 = 5", "8*7 = 56", "9/3 = 3.0", "10-4 = 6", "4 of 4 tasks done"):
        assert line in out.stdout
    assert "100/100 done" in out.stderr and "at rate 1.00: 2.718" in out.stdout
    # The sweep spreads over both workers: the demo waits for both to serve pyexec first (it
    # once started after the first, and the whole sweep ran one item at a time).
    assert "2 running" in out.stderr
