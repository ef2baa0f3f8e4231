"""The cluster picture (gearnb.visual.cluster, cluster_view): at each step of a scripted
scenario its model must say what the admin protocol says, through the gearnb server and a
real gearmand; the in-process source must also know the queues' order and who runs what."""

from __future__ import annotations

import queue
import threading
import xml.etree.ElementTree as ET

import pytest

import gearnb
from gearnb.visual.cluster import AdminSource, InProcessSource, snapshot
from gearnb.protocol import PacketType as P
from gearnb.visual.cluster_view import ClusterView
from peers import gearnb_server, wait_until, worker_thread
from server_helpers import submit, worker

SVG = "{http://www.w3.org/2000/svg}"


class Gate:
    """The function ``count``: each job reports 1/3, then waits until released."""

    def __init__(self) -> None:
        self.started: queue.Queue[bytes] = queue.Queue()
        self._release = threading.Semaphore(0)

    def __call__(self, job) -> bytes:
        job.send_status(1, 3)
        self.started.put(job.handle)
        if not self._release.acquire(timeout=60):
            raise TimeoutError("never released")
        return b"counted"

    def release(self, jobs: int = 1) -> None:
        for _ in range(jobs):
            self._release.release()

    def next_started(self) -> bytes:
        return self.started.get(timeout=30)


def shown(root, cls: str) -> list[str]:
    """The text of the SVG text elements of class ``cls``, without their tooltips."""
    return [(n.text or "") + "".join(c.tail or "" for c in n) for n in root.iter(SVG + "text") if n.get("class") == cls]


def assert_matches_admin(snap, admin: gearnb.Admin) -> None:
    """The snapshot's numbers are the admin protocol's, asked now."""
    status = {s.function: s for s in admin.status()}
    priorities = {p.function: p for p in admin.priority_status()}
    assert {f.name for f in snap.functions} == set(status)
    for f in snap.functions:
        s, p = status[f.name], priorities[f.name]
        assert (f.total, f.running, f.workers) == (s.total, s.running, s.workers), f
        assert f.queued == (p.high, p.normal, p.low), f
    workers = sorted((w.client_id, tuple(w.functions)) for w in admin.workers() if w.functions)
    assert sorted((w.client_id, w.functions) for w in snap.workers) == workers
    listed = admin.show_jobs()
    assert {j.handle for j in snap.jobs} == {j.handle for j in listed}
    # show jobs' JOB_QUEUED column is 1 for background jobs, running or not, 0 for foreground ones.
    assert {j.handle: j.background for j in snap.jobs} == {j.handle: j.background for j in listed}
    assert len(snap.running) == sum(s.running for s in status.values())


def check(sources, admin, *, queued, running=(), workers=0):
    """Every source's snapshot matches the admin protocol and the expected counts."""
    snaps = [source.snapshot() for source in sources]
    for snap in snaps:
        assert_matches_admin(snap, admin)
        count = snap.function("count")
        assert (count.queued, count.running, count.workers) == (queued, len(running), workers)
        assert sorted(j.handle for j in snap.running) == sorted(h.decode() for h in running)
        for job in snap.running:  # each running job reported 1/3 before it waited
            assert (job.numerator, job.denominator, job.progress) == (1, 3, 1 / 3)
    return snaps


def run_scenario(address: str, sources) -> dict[str, bytes]:
    """No worker: five jobs wait. A worker comes: the high job runs first, then a high job
    submitted later overtakes the queued normal ones; at last everything drains."""
    gate = Gate()
    with gearnb.Admin(address) as admin, gearnb.Client(address) as client:
        handles = {}
        for name, priority in (("low", "low"), ("normal-1", "normal"), ("normal-2", "normal"), ("high-1", "high")):
            handles[name] = client.do_background("count", name, priority=priority, unique=name)
        fg = client.submit(gearnb.Task("count", b"fg", unique="fg"))  # a foreground job, also normal
        wait_until(lambda: fg.handle)
        handles["fg"] = fg.handle
        check(sources, admin, queued=(1, 3, 1))

        def reported(handle: bytes) -> bool:  # its WORK_STATUS reached the server
            return client.status(handle).numerator == 1

        with worker_thread(address, {"count": gate}, client_id="gated"):
            assert gate.next_started() == handles["high-1"]
            wait_until(lambda: reported(handles["high-1"]))
            check(sources, admin, queued=(0, 3, 1), running=[handles["high-1"]], workers=1)

            handles["high-2"] = client.do_background("count", "high-2", priority="high", unique="high-2")
            check(sources, admin, queued=(1, 3, 1), running=[handles["high-1"]], workers=1)
            gate.release()
            assert gate.next_started() == handles["high-2"]  # ahead of the three normal jobs
            wait_until(lambda: reported(handles["high-2"]))
            check(sources, admin, queued=(0, 3, 1), running=[handles["high-2"]], workers=1)

            order = []
            for _ in range(4):
                gate.release()
                order.append(gate.next_started())
            assert order == [handles["normal-1"], handles["normal-2"], handles["fg"], handles["low"]]
            gate.release()
            assert fg.wait(timeout=30) and fg.result == b"counted"
            wait_until(lambda: all(s.total == 0 for s in admin.status()))
            check(sources, admin, queued=(0, 0, 0), workers=1)
        return handles


def test_show_jobs_and_status_agree_on_what_runs(server_address, connect):
    """Two jobs run (one background, one foreground) and two wait: ``show jobs`` lists the
    four that ``status`` counts, its JOB_QUEUED column (JobInfo.background) tells background
    from foreground, running or not, on gearmand and the gearnb server alike; which two run
    is what ``status`` and GET_STATUS say, and what the picture shows."""
    c = connect(server_address)
    bg_run = submit(c, P.SUBMIT_JOB_BG, b"f", b"bg-run", b"1")
    fg_run = submit(c, P.SUBMIT_JOB, b"f", b"fg-run", b"2")
    fg_wait = submit(c, P.SUBMIT_JOB, b"f", b"fg-wait", b"3")
    bg_wait = submit(c, P.SUBMIT_JOB_BG, b"f", b"bg-wait", b"4")
    for expected in (bg_run, fg_run):
        assert worker(connect, server_address, b"f").call(P.GRAB_JOB_UNIQ, reply=P.JOB_ASSIGN_UNIQ)[0] == expected
    with gearnb.Admin(server_address) as admin:
        [status] = admin.status()
        assert (status.function, status.total, status.running, status.workers) == ("f", 4, 2, 2)
        listed = {j.handle.encode(): j for j in admin.show_jobs()}
        assert sorted(listed) == sorted([bg_run, fg_run, fg_wait, bg_wait])  # every job status counts
        assert {h: j.background for h, j in listed.items()} == {bg_run: True, fg_run: False, fg_wait: False,
                                                                bg_wait: True}
        assert {(j.retries, j.ignored) for j in listed.values()} == {(0, False)}
        running = {h for h in listed if c.call(P.GET_STATUS, h, reply=P.STATUS_RES)[2] == b"1"}
        assert running == {bg_run, fg_run} and len(running) == status.running
        snap = snapshot(server_address)
        assert_matches_admin(snap, admin)
        assert {j.handle.encode(): (j.state, j.background) for j in snap.jobs} == {
            bg_run: ("running", True), fg_run: ("running", False), fg_wait: ("queued", False),
            bg_wait: ("queued", True)}


def test_picture_matches_the_admin_protocol(server_address):
    source = AdminSource(server_address)
    try:
        run_scenario(server_address, [source])
    finally:
        source.close()


def test_in_process_picture_also_knows_order_and_who_runs_what():
    with gearnb_server() as server:
        admin_source = AdminSource(server.address)
        in_process = InProcessSource(server)
        gate = Gate()
        try:
            with gearnb.Client(server.address) as client:
                jobs = [client.do_background("count", str(i), priority=p, unique=str(i))
                        for i, p in enumerate(("normal", "low", "normal", "high"))]
                snap = in_process.snapshot()
                assert snap.function("count").queue == ((jobs[3].decode(),), (jobs[0].decode(), jobs[2].decode()),
                                                        (jobs[1].decode(),))
                assert [j.priority for j in snap.jobs] == ["normal", "low", "normal", "high"]
                with worker_thread(server.address, {"count": gate}, client_id="gated"):
                    assert gate.next_started() == jobs[3]
                    wait_until(lambda: client.status(jobs[3]).numerator == 1)
                    snap = in_process.snapshot()
                    (worker,) = snap.workers
                    assert (worker.name, worker.functions, worker.running, worker.sleeping) == (
                        "gated", ("count",), (jobs[3].decode(),), False)
                    assert snap.job(jobs[3]).worker == "gated" and snap.job(jobs[3]).function == "count"
                    assert snap.function("count").queue[0] == ()
                    # The admin source cannot say who runs what, and says so.
                    remote = admin_source.snapshot()
                    assert remote.workers[0].running is None and remote.job(jobs[3]).worker is None
                    assert any("not in the admin protocol" in note for note in remote.notes)
                    gate.release(4)
                    wait_until(lambda: in_process.snapshot().function("count").total == 0)
                wait_until(lambda: in_process.snapshot().workers == ())  # the server saw it leave
                assert in_process.snapshot().jobs == ()
            run_scenario(server.address, [in_process, admin_source])
        finally:
            admin_source.close()


def test_snapshot_draws_itself(server_address):
    gate = Gate()
    with gearnb.Client(server_address) as client, worker_thread(server_address, {"count": gate}, client_id="gated"):
        running = client.do_background("count", "a", unique="a")
        assert gate.next_started() == running
        queued = [client.do_background("count", str(i), priority="high", unique=f"h{i}") for i in range(3)]
        wait_until(lambda: client.status(running).numerator == 1)
        snap = snapshot(server_address)
        root = ET.fromstring(snap._repr_svg_())
        classes = [node.get("class") for node in root.iter()]
        assert (classes.count("job high"), classes.count("job running")) == (3, 1)  # three waiting, one running
        assert shown(root, "function") == ["count"]
        assert shown(root, "worker") == ["gated"]
        (row,) = shown(root, "running-job")
        assert row.startswith(running.decode())
        table = [line.split() for line in repr(snap).splitlines()]
        assert ["count", "3", "0", "0", "1", "1"] in table  # high normal low running workers
        gate.release(4)
        for handle in queued:
            wait_until(lambda h=handle: not client.status(h).known)


def test_live_view_follows_the_jobs(server_address):
    gate = Gate()
    with gearnb.Client(server_address) as client:
        normal = [client.do_background("count", f"n{i}", unique=f"n{i}") for i in range(2)]
        view = ClusterView(server_address, interval=0.05)
        try:
            wait_until(lambda: view.snapshot is not None and view.snapshot.function("count").queued == (0, 2, 0))
            assert "<svg" in view.picture.value and view.running
            with worker_thread(server_address, {"count": gate}, client_id="gated"):
                assert gate.next_started() == normal[0]
                high = client.do_background("count", "h", priority="high", unique="h")
                wait_until(lambda: [j.handle for j in view.started] == [normal[0].decode()])
                gate.release()
                assert gate.next_started() == high  # the high job overtakes the queued normal one
                wait_until(lambda: [j.handle for j in view.started] == [normal[0].decode(), high.decode()])
                wait_until(lambda: view.snapshot.job(high) is not None and view.snapshot.job(high).numerator == 1)
                gate.release()
                # Polling sees what lasts longer than a poll: the last job waits until it was seen.
                assert gate.next_started() == normal[1]
                wait_until(lambda: len(view.started) == 3)
                gate.release()
                wait_until(lambda: len(view.finished) == 3 and view.snapshot.function("count").total == 0)
                assert [j.handle for j in view.started] == [h.decode() for h in (normal[0], high, normal[1])]
                assert [j.handle for j in view.finished] == [h.decode() for h in (normal[0], high, normal[1])]
                assert "started, in order" in view.picture.value
        finally:
            view.stop()
    assert not view.running and view.stopped_because == "stopped"
    assert "stopped" in view.status.value
    assert view.draws >= 3


@pytest.mark.parametrize("how", ["admin", "in-process"])
def test_live_view_gives_up_when_the_server_goes(how):
    with gearnb_server() as server:
        view = ClusterView(server.address if how == "admin" else server, interval=0.05)
        wait_until(lambda: view.draws >= 1)
    wait_until(lambda: not view.running, timeout=30)
    assert view.stopped_because.startswith("stopped after 10 failed updates")
    assert "not running" in view.stopped_because or how == "admin"


def test_sources_refuse_what_they_cannot_picture():
    with pytest.raises(TypeError, match="host:port"):
        ClusterView(42)


def test_a_stopped_view_keeps_the_picture_of_when_it_stopped(server_address):
    """The last picture is drawn at stop(), not up to an interval earlier; a function with
    nothing waiting or running takes one line."""
    with gearnb.Client(server_address) as client, gearnb.Admin(server_address) as admin:
        admin.command("create function idle")
        view = ClusterView(server_address, interval=60)  # one poll now, the next in a minute
        try:
            wait_until(lambda: view.draws == 1)
            assert shown(ET.fromstring(view.picture.value), "function") == ["idle"]
            handle = client.do_background("count", "late", unique="late")
        finally:
            view.stop()
        assert view.draws == 2 and view.snapshot.job(handle) is not None
        root = ET.fromstring(view.picture.value)
        assert shown(root, "function") == ["count", "idle"]
        rows = [node.get("class") for node in root.iter() if (node.get("class") or "").startswith("job ")]
        assert rows == ["job normal"]  # the waiting job; the idle function has no rows at all
        labels = [node.text for node in root.iter(SVG + "text") if node.text in ("high", "normal", "low", "running")]
        assert labels == ["high", "normal", "low", "running"]  # count's four rows only
