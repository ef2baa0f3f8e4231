"""The task stream (gearnb.visual.stream): the model from records, from a real server's
packets (worker threads, a worker that drops its connection mid-job, a separate server
process), and its drawings (SVG, matplotlib)."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET

import pytest

import gearnb
from gearnb.protocol import PacketType as P
from gearnb.visual import TaskRecord, TaskStream, task_stream, trace
from peers import GearnbProcess, RawConnection, gearnb_server, wait_until, worker_thread

SVG = "{http://www.w3.org/2000/svg}"


def records():
    return [
        TaskRecord("#0", "host:101", 10.0, 10.5),
        TaskRecord("#1", "host:102", 10.1, 10.3),
        TaskRecord("#2", "host:101", 10.5, 10.9, ok=False, error="ValueError"),
        TaskRecord("#2", "host:102", 10.9, 11.2, attempt=2),
        TaskRecord("#3", "host:1010", 10.2, 10.2),  # instantaneous: still a bar
    ]


def test_one_bar_per_record_in_worker_lanes():
    stream = TaskStream(records())
    lay = stream.layout()
    assert lay.workers == ("host:101", "host:102", "host:1010")  # natural order
    assert len(lay.bars) == 5 and lay.origin == 10.0 and lay.span == pytest.approx(1.2)
    for bar in lay.bars:
        assert 0 <= bar.x0 <= bar.x1
        assert lay.workers[bar.lane] == bar.record.worker
        assert bar.x1 - bar.x0 == pytest.approx(bar.record.duration)
    failed = [b for b in lay.bars if not b.record.ok]
    assert [(b.record.task, b.colour, b.retry) for b in failed] == [("#2", "#cf222e", False)]
    assert [(b.record.task, b.record.attempt) for b in lay.bars if b.retry] == [("#2", 2)]
    assert "failed: ValueError" in failed[0].label


def test_records_must_make_sense():
    with pytest.raises(ValueError, match="ends"):
        TaskRecord("#0", "w", 2.0, 1.0)
    with pytest.raises(ValueError, match="attempt"):
        TaskRecord("#0", "w", 1.0, 2.0, attempt=0)


def test_drawings():
    stream = TaskStream(records())
    root = ET.fromstring(stream.svg())
    bars = [n for n in root.iter(SVG + "rect") if (n.get("class") or "").startswith("bar")]
    assert len(bars) == 5
    assert sum("failed" in n.get("class") for n in bars) == 1
    assert sum(n.get("stroke-dasharray") is not None for n in bars) == 1  # the retry
    lanes = ["".join(c.tail or "" for c in n) for n in root.iter(SVG + "text") if n.get("class") == "lane"]
    assert lanes == ["host:101", "host:102", "host:1010"]  # the text after each tooltip
    assert "3 workers" in repr(stream) and "host:101: 2 runs, 1 failed" in repr(stream)
    fig = stream.plot()
    (ax,) = fig.axes
    paths = sum(len(c.get_paths()) for c in ax.collections)
    assert paths == 5
    assert [t.get_text() for t in ax.get_yticklabels()] == ["host:101", "host:102", "host:1010"]
    assert "5 runs on 3 workers, 1 failed, 1 retries" in ax.get_title()
    empty = TaskStream()
    assert "no tasks yet" in empty.svg() and empty.plot() is not None


def test_stream_of_a_real_server_has_the_right_worker_for_every_job():
    ran: dict[bytes, str] = {}  # ground truth: each worker notes the jobs it runs
    lock = threading.Lock()

    def job_for(name):
        def run(job):
            with lock:
                ran[job.handle] = name
            if job.data.startswith(b"fail"):
                raise ValueError(job.data.decode())
            return job.data
        return run

    with gearnb_server() as server, \
            worker_thread(server.address, {"work": job_for("w1")}, client_id="w1"), \
            worker_thread(server.address, {"work": job_for("w2")}, client_id="w2"):
        with gearnb.Client(server.address) as client, task_stream(server) as stream:
            tasks = gearnb.TaskSet(client)
            for i in range(40):
                tasks.add(gearnb.Task("work", f"fail {i}" if i % 10 == 3 else str(i)))
            assert tasks.wait(timeout=60)
            wait_until(lambda: len(stream) == 40)
        assert server.job_server.tracer is None
    lay = stream.layout()
    assert len(lay.bars) == 40 and len(ran) == 40
    assert set(lay.workers) <= {"w1", "w2"}
    for bar in lay.bars:
        assert bar.x0 <= bar.x1
        assert bar.record.worker == ran[bar.record.task.encode()]
        assert bar.record.ok == (bar.record.error == "")
    assert sum(not b.record.ok for b in lay.bars) == 4
    assert {b.record.error for b in lay.bars if not b.record.ok} == {"exception"}


def test_a_worker_lost_mid_job_is_a_failed_attempt_then_a_retry():
    with gearnb_server() as server:
        with trace(server) as t, gearnb.Client(server.address) as client:
            task = client.submit(gearnb.Task("f", b"x"))
            wait_until(lambda: task.handle)
            crash = RawConnection(server.address)
            crash.send(P.SET_CLIENT_ID, b"crasher")
            crash.send(P.CAN_DO, b"f")
            crash.send(P.GRAB_JOB_UNIQ)
            handle = crash.expect(P.JOB_ASSIGN_UNIQ)[0].decode()
            crash.close()
            with worker_thread(server.address, {"f": lambda job: b"ok"}, client_id="rescuer"):
                assert task.wait(timeout=30)
    stream = TaskStream.from_trace(t)
    assert [(r.task, r.worker, r.ok, r.attempt, r.error) for r in stream.records] == [
        (handle, "crasher", False, 1, "worker lost"), (handle, "rescuer", True, 2, "")]
    first, second = stream.records
    assert first.end <= second.start


def test_stream_of_a_separate_server_process():
    process = GearnbProcess().start()
    try:
        with worker_thread(process.address, {"f": lambda job: job.data}, client_id="solo"):
            with task_stream(process.address) as stream, gearnb.Client(process.address) as client:
                for i in range(5):
                    assert client.do("f", str(i), timeout=30) == str(i).encode()
                wait_until(lambda: len(stream) == 5)
        assert [r.worker for r in stream.records] == ["solo"] * 5
        assert all(r.ok and r.start <= r.end for r in stream.records)
    finally:
        process.stop()


def test_live_view_redraws_when_records_arrive():
    stream = TaskStream()
    view = stream.live(interval=0.05)
    try:
        wait_until(lambda: view.draws == 1 and "no tasks yet" in view.picture.value)
        for record in records():
            stream.add(record)
        wait_until(lambda: "5 runs on 3 workers" in view.picture.value)
        draws = view.draws
        assert ET.fromstring(view.picture.value).tag == SVG + "svg"
    finally:
        view.stop()
    assert view.draws == draws and not view.running
