"""The progress panel in a real Jupyter kernel (tests/kernels.py), read off its widget messages:
"starting N workers…" while the first call starts the local cluster, item counts that add up
(done + running + queued = total, running never more than the workers can hold), a bar that
moves per item inside chunks, and the map's task stream drawn from the workers' timings; the
line a first ``submit`` shows while the cluster starts. The task stream of a map: one bar per
task, start <= end, on the lane of the worker process that ran it."""

from __future__ import annotations

import os
import re
from typing import Any

import gearnb

COUNTS = re.compile(r"^(\d+)/(\d+) done · (\d+) running · (\d+) queued")
CPUS = os.cpu_count() or 1  # the local cluster's default worker count, in the kernel too


def widget_history(messages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """comm id -> the widget's state after its open and after each update, in order."""
    history: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        content = m["content"]
        if m["msg_type"] == "comm_open":
            history[content["comm_id"]] = [dict(content["data"]["state"])]
        elif m["msg_type"] == "comm_msg" and content["data"].get("method") == "update":
            states = history[content["comm_id"]]
            states.append({**states[-1], **content["data"]["state"]})
    return history


def panel_parts(history: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The panel's info line (its texts in order), its bar (values in order) and its children."""
    boxes = [c for c, states in history.items() if states[0]["_model_name"] == "VBoxModel"
             and "gearnb-progress" in states[-1].get("_dom_classes", [])]
    assert len(boxes) == 1, boxes
    box = history[boxes[0]]
    children = [c.removeprefix("IPY_MODEL_") for c in box[-1]["children"]]
    header, info = children[0], children[1]
    bar = next(c.removeprefix("IPY_MODEL_") for c in history[header][-1]["children"]
               if history[c.removeprefix("IPY_MODEL_")][0]["_model_name"] == "FloatProgressModel")
    texts = [re.sub("<[^>]+>", "", s["value"]) for s in history[info]]
    return {"texts": [t for i, t in enumerate(texts) if t and (i == 0 or t != texts[i - 1])],
            "bar": [s["value"] for s in history[bar]], "children": children, "history": history}


def test_the_panel_says_the_cluster_is_starting_then_counts_items(kernel):
    messages = kernel.run("""
        import time, gearnb
        def slow(x):
            time.sleep(0.05)
            return x
        assert gearnb.map(slow, range(60), chunksize=10) == list(range(60))
    """)
    panel = panel_parts(widget_history(messages))
    texts = panel["texts"]
    workers = "worker" if CPUS == 1 else "workers"
    assert texts[0] == f"starting {CPUS} {workers}…", texts[:3]
    ready = [t for t in texts if t.startswith(f"starting {CPUS} {workers}… ")]
    assert ready and ready[-1] == f"starting {CPUS} {workers}… {CPUS}/{CPUS} ready", texts[:6]
    counts = [tuple(map(int, COUNTS.match(t).groups())) for t in texts if COUNTS.match(t)]
    assert counts and counts[-1][:2] == (60, 60), texts[-3:]
    for done, total, running, queued in counts:
        assert total == 60 and done + running + queued == total, (done, running, queued)
        assert running <= CPUS * 10, running  # items the workers can hold: workers x chunksize
    assert texts.index(ready[-1]) < texts.index(next(t for t in texts if COUNTS.match(t)))
    # Per item, inside chunks of 10 (0.5 s each): the bar stops at values between chunks'.
    assert any(0 < v < 60 and v % 10 for v in panel["bar"]), panel["bar"]
    assert panel["bar"][-1] == 60


def test_the_panel_draws_the_maps_task_stream(kernel):
    kernel.run("import gearnb\ngearnb.map(abs, range(4), progress=False)")  # the cluster is up
    messages = kernel.run("""
        import time
        def slow(x):
            time.sleep(0.1)
            return x
        assert gearnb.map(slow, range(24), chunksize=1) == list(range(24))
        stream = gearnb.last_task_stream()
        assert len(stream) == 24
    """)
    panel = panel_parts(widget_history(messages))
    history = panel["history"]
    streams = [c for c in panel["children"] if "gearnb-task-stream" in history[c][-1].get("_dom_classes", [])]
    assert len(streams) == 1, panel["children"]
    pictures = [s["value"] for s in history[streams[0]] if s["value"]]
    assert len(pictures) >= 2  # drawn while the map ran, and at its end
    assert pictures[-1].count('class="bar') == 24 and "24 runs on" in pictures[-1]


def test_a_first_submit_says_what_starts(kernel):
    messages = kernel.run("""
        import gearnb
        assert gearnb.submit(abs, -3).result(timeout=60) == 3
    """)
    shown = [m["content"]["data"]["text/html"] for m in messages
             if m["msg_type"] in ("display_data", "update_display_data") and "text/html" in m["content"]["data"]]
    texts = [re.sub("<[^>]+>", "", t) for t in shown]
    workers = "worker" if CPUS == 1 else "workers"
    assert texts[0] == f"starting {CPUS} {workers}…", texts
    assert re.fullmatch(rf"gearnb: a local cluster of {CPUS} {workers} started in \d+\.\d s \(127\.0\.0\.1:\d+\)",
                        texts[-1]), texts
    displays = {m["content"]["transient"]["display_id"] for m in messages
                if m["msg_type"] in ("display_data", "update_display_data") and "text/html" in m["content"]["data"]}
    assert len(displays) == 1  # one line, updated in place


def test_task_stream_of_a_map_one_bar_per_task_on_the_worker_that_ran_it():
    import socket

    def where(x):
        return os.getpid(), os.getppid()

    with gearnb.local(workers=2) as ex:
        results = ex.gmap(where, range(30), chunksize=1)
        stream = ex.last_task_stream
        records = stream.records
        assert len(records) == 30 and len(stream.layout().bars) == 30
        host = socket.gethostname()
        by_task = {r.task: r for r in records}
        assert sorted(by_task) == sorted(f"#{i}" for i in range(30))
        for i, (task_pid, worker_pid) in enumerate(results):
            record = by_task[f"#{i}"]
            assert record.start <= record.end and record.ok and record.items == 1 and record.attempt == 1
            assert record.worker == f"{host}:{worker_pid}" and record.process == f"{host}:{task_pid}"
        assert {int(r.worker.rsplit(":", 1)[1]) for r in records} <= set(ex.worker_pids())
        # Chunks: one bar per chunk, carrying its items.
        assert ex.gmap(where, range(30), chunksize=10) and len(ex.last_task_stream) == 3
        assert sorted(r.items for r in ex.last_task_stream.records) == [10, 10, 10]
        assert gearnb.last_task_stream is not None


def test_task_stream_marks_failures_and_retries(tmp_path):
    flag = tmp_path / "failed-once"

    def flaky(x):
        if x == 3 and not os.path.exists(flag):
            open(flag, "w").close()
            raise ValueError("first time")
        return x

    with gearnb.local(workers=2) as ex:
        assert ex.gmap(flaky, range(6), chunksize=1, retries=1) == list(range(6))
        records = sorted(ex.last_task_stream.records, key=lambda r: (r.task, r.attempt))
        three = [r for r in records if r.task == "#3"]
        assert [(r.attempt, r.ok, r.error) for r in three] == [(1, False, "ValueError"), (2, True, "")]
        assert len(records) == 7


def test_the_panels_live_stream_draws_the_latest_runs_only():
    """A map of many tasks: the panel draws a rolling window of the latest LIVE_BARS runs (an
    SVG of 10,000 bars is 1.9 MB); the map's stream keeps them all."""
    from gearnb.progress import widget
    from gearnb.progress.tracker import Snapshot
    from gearnb.visual import TaskRecord, TaskStream

    total = widget.LIVE_BARS + 500
    stream = TaskStream([TaskRecord(f"#{i}", f"host:{i % 4}", i * 0.01, i * 0.01 + 0.005) for i in range(total)])
    view = widget.WidgetView("many", total)
    view.close(Snapshot(label="many", total=total, done=total, failed=0, in_flight=0, running=0, queued=0,
                        rate=1.0, eta=None, elapsed=5.0, tasks=[], finished=True, stream=stream))
    picture = view.stream.value
    assert f"the latest {widget.LIVE_BARS:,} of {total:,} runs" in picture
    assert picture.count('class="bar') == widget.LIVE_BARS and f"#{total - 1} on " in picture and "#0 on " not in picture
    assert len(stream) == total and view.stream in view.box.children
