"""Packet traces (gearnb.visual.trace) and their sequence diagrams, against real peers: a
gearnb server in this process and as a separate process, gearnb Workers on threads, a
Client, a raw socket worker that drops its connection mid-job."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import msgpack
import pytest

import gearnb
from gearnb.protocol import PacketType as P
from gearnb.server.workers import ASLEEP
from gearnb.visual import PacketEvent, trace
from peers import GearnbProcess, RawConnection, gearnb_server, wait_until, worker_thread

SVG = "{http://www.w3.org/2000/svg}"


def addition(job):
    a, b = msgpack.unpackb(job.data)
    job.send_status(1, 2)
    return msgpack.packb(a + b)


def asleep(t, lane_title: str):
    """A wait_for predicate: the lane's last packet to the server is PRE_SLEEP."""
    def check(events):
        try:
            names = t.sequence(t.lane(lane_title), kinds=("in",))
        except KeyError:
            return False
        return bool(names) and names[-1] == "PRE_SLEEP"
    return check


# What each lane of the scripted calculus run must show, in order ("<" = from the server).
WORKER_LANE = [
    "RESET_ABILITIES", "SET_CLIENT_ID", "CAN_DO",          # the worker's hello
    "GRAB_JOB_UNIQ", "<NO_JOB", "PRE_SLEEP",               # nothing to do: it sleeps
    "<NOOP",                                               # woken by the client's submit
    "GRAB_JOB_UNIQ", "<JOB_ASSIGN_UNIQ",                   # it pulls the job
    "WORK_STATUS", "WORK_COMPLETE",
    "GRAB_JOB_UNIQ", "<NO_JOB", "PRE_SLEEP",               # and back to sleep at once
]
CLIENT_LANE = ["OPTION_REQ", "<OPTION_RES", "SUBMIT_JOB", "<JOB_CREATED", "<WORK_STATUS", "<WORK_COMPLETE"]


def run_calculus(address: str, t) -> bytes:
    """The calculus demo in small: a worker for "addition" starts, then a client adds 2 + 3."""
    with worker_thread(address, {"addition": addition}, client_id="calc-1"):
        assert t.wait_for(asleep(t, "calc-1")), t.text()
        with gearnb.Client(address) as client:
            result = client.do("addition", msgpack.packb([2, 3]), timeout=30)
        assert t.wait_for(lambda events: t.sequence(t.lane("calc-1")) == WORKER_LANE), t.text()
        return result


def check_calculus(t) -> None:
    lanes = {lane.title: lane for lane in t.lanes}
    assert set(lanes) == {"worker calc-1", "client 1"}, lanes
    assert lanes["worker calc-1"].abilities == ("addition",)
    assert t.sequence(lanes["worker calc-1"]) == WORKER_LANE, t.text()
    assert t.sequence(lanes["client 1"]) == CLIENT_LANE, t.text()
    # Across lanes: the NOOP follows the submit, the status and result go through the server.
    # (Packets that came in one read are recorded together, before what the server wrote in
    # answer: a worker's WORK_STATUS and WORK_COMPLETE may both precede the client's copies.)
    order = [(e.conn, e.kind, e.name) for e in t.events if e.kind in ("in", "out")]
    worker, client = lanes["worker calc-1"].conn, lanes["client 1"].conn
    steps = [(client, "in", "SUBMIT_JOB"), (client, "out", "JOB_CREATED"), (worker, "out", "NOOP"),
             (worker, "out", "JOB_ASSIGN_UNIQ"), (worker, "in", "WORK_STATUS"), (worker, "in", "WORK_COMPLETE"),
             (client, "out", "WORK_COMPLETE")]
    positions = [order.index(step) for step in steps]
    assert positions == sorted(positions), positions
    passed_on = order.index((client, "out", "WORK_STATUS"))
    assert order.index((worker, "in", "WORK_STATUS")) < passed_on < order.index((client, "out", "WORK_COMPLETE"))
    # Key arguments: the handle JOB_CREATED names is the one assigned, reported and completed.
    created = next(e for e in t.events if e.name == "JOB_CREATED")
    handle = created.arg("handle")
    assert handle.startswith("H:")
    assign = next(e for e in t.events if e.name == "JOB_ASSIGN_UNIQ")
    assert (assign.arg("handle"), assign.arg("function"), assign.arg("data")) == (handle, "addition", "3 B")
    submit = next(e for e in t.events if e.name == "SUBMIT_JOB")
    assert submit.arg("function") == "addition" and submit.size == len("addition") + 2 + 3
    statuses = [e for e in t.events if e.name == "WORK_STATUS"]
    assert [(e.kind, e.arg("handle"), e.arg("numerator"), e.arg("denominator")) for e in statuses] == [
        ("in", handle, "1", "2"), ("out", handle, "1", "2")]
    assert statuses[0].detail == f"{handle} 1/2"
    assert [e.client_id for e in t.events if e.conn == worker and e.name == "CAN_DO"] == ["calc-1"]


def test_calculus_trace_in_process():
    with gearnb_server() as server:
        with trace(server) as t:
            assert msgpack.unpackb(run_calculus(server.address, t)) == 5
        check_calculus(t)
        # The last trace gone, the server checks one attribute per packet again.
        assert server.job_server.tracer is None


def test_calculus_trace_of_a_separate_server_process():
    process = GearnbProcess().start()
    try:
        with trace(process.address) as t:
            assert msgpack.unpackb(run_calculus(process.address, t)) == 5
        check_calculus(t)
        # The streaming admin connection was never a lane, and is gone once the trace ends.
        with gearnb.Admin(process.address) as admin:
            wait_until(lambda: len(admin.workers()) == 1)  # only this admin connection
    finally:
        process.stop()


def test_trace_command_leaves_the_server_when_the_reader_goes():
    with gearnb_server() as server:
        with trace(server.address) as t:  # the admin stream, from a server in this process
            with worker_thread(server.address, {"f": addition}, client_id="w"):
                assert t.wait_for(asleep(t, "w"))
            assert t.wait_for(lambda events: events[-1].kind == "closed")  # the worker's end
            assert server.job_server.tracer is not None
        wait_until(lambda: server.job_server.tracer is None)
        assert t.sequence(t.lane("w"), kinds=("closed",)) == ["closed"]


def test_svg_is_valid_and_names_every_lane_and_packet():
    with gearnb_server() as server:
        with trace(server) as t:
            run_calculus(server.address, t)
    root = ET.fromstring(t.svg())
    assert root.tag == SVG + "svg"
    # What a text element shows: its text, not its <title> tooltip.
    texts = [(node.text or "") + "".join(child.tail or "" for child in node) for node in root.iter(SVG + "text")]
    titles = [text for node, text in zip(root.iter(SVG + "text"), texts) if node.get("class") == "lane-title"]
    assert titles == ["client 1", "job server", "worker calc-1"]
    packets = [text for node, text in zip(root.iter(SVG + "text"), texts) if node.get("class") == "packet"]
    assert packets == [e.name for e in t.events if e.kind in ("in", "out")]
    for name in ("CAN_DO", "GRAB_JOB_UNIQ", "NO_JOB", "PRE_SLEEP", "NOOP", "JOB_ASSIGN_UNIQ", "WORK_STATUS",
                 "WORK_COMPLETE", "SUBMIT_JOB", "JOB_CREATED"):
        assert name in packets
    # The html form scrolls the same picture; the text form draws the same arrows.
    assert t._repr_html_().count("<svg") == 1
    text = repr(t)
    assert text.splitlines()[0].split() == ["client", "1", "job", "server", "worker", "calc-1"]
    arrows = [line for line in text.splitlines()[2:] if "->" in line or "<-" in line]
    assert len(arrows) == len(packets)
    assert [line.split("   ")[-1].split()[0] for line in arrows] == packets
    assert "|<" in arrows[0] and "JOB_ASSIGN_UNIQ" in next(a for a in arrows if "->|" in a and "JOB_ASSIGN" in a)


def test_connections_open_before_the_trace_are_drawn_with_their_state():
    """A worker asleep before the trace starts with its state; one that stays asleep all
    along gets no lane, only a mention under the diagram."""
    with (gearnb_server() as server, worker_thread(server.address, {"addition": addition}, client_id="early"),
          worker_thread(server.address, {"other": addition}, client_id="idle")):
        wait_until(lambda: sum(c.worker is not None and c.worker.state == ASLEEP
                               for c in list(server.job_server.connections)) == 2)
        with trace(server) as t:
            with gearnb.Client(server.address) as client:
                client.do("addition", msgpack.packb([1, 1]), timeout=30)
        lane = t.lane("early")
        assert lane.role == "worker" and lane.abilities == ("addition",)
        first = next(e for e in t.events if e.conn == lane.conn)
        assert (first.kind, first.arg("abilities"), first.arg("sleeping")) == ("state", "addition", "1")
        assert t.sequence(lane)[:3] == ["<NOOP", "GRAB_JOB_UNIQ", "<JOB_ASSIGN_UNIQ"]
        assert "can do addition · asleep" in t.text()
        idle = t.lane("idle")
        assert t.sequence(idle, kinds=("state", "in", "out")) == ["state"]
        root = ET.fromstring(t.svg())
        titles = [node.text for node in root.iter(SVG + "text") if node.get("class") == "lane-title"]
        assert titles == ["client 1", "job server", "worker early"]
        note = "not drawn, no packets during the trace: worker idle"
        assert note in t.text() and note in t.svg()


def test_a_worker_that_drops_mid_job_ends_its_lane_and_the_job_moves_on():
    with gearnb_server() as server:
        with trace(server) as t:
            with gearnb.Client(server.address) as client:
                task = client.submit(gearnb.Task("f", b"data"))
                wait_until(lambda: task.handle)  # JOB_CREATED: the job is queued
                crash = RawConnection(server.address)
                crash.send(P.SET_CLIENT_ID, b"crasher")
                crash.send(P.CAN_DO, b"f")
                crash.send(P.GRAB_JOB_UNIQ)
                handle = crash.expect(P.JOB_ASSIGN_UNIQ)[0]
                crash.close()  # the worker dies holding the job: the server requeues it
                with worker_thread(server.address, {"f": lambda job: b"done"}, client_id="rescuer"):
                    assert task.wait(timeout=30) and task.result == b"done"
                    assert t.wait_for(asleep(t, "rescuer"))
        crasher, rescuer = t.lane("crasher"), t.lane("rescuer")
        assert t.sequence(crasher, kinds=("in", "out", "closed")) == [
            "SET_CLIENT_ID", "CAN_DO", "GRAB_JOB_UNIQ", "<JOB_ASSIGN_UNIQ", "closed"]
        assigned = [e.arg("handle") for e in t.events if e.name == "JOB_ASSIGN_UNIQ"]
        assert assigned == [handle.decode(), handle.decode()]
        assert "WORK_COMPLETE" in t.sequence(rescuer)
        assert "connection closed" in t.svg() and "x" in t.text()


def test_large_payloads_are_traced_by_size():
    payload = bytes(range(256)) * 1024  # 256 KiB: sent and received in parts
    with gearnb_server() as server, worker_thread(server.address, {"echo": lambda job: job.data}):
        with trace(server) as t:
            with gearnb.Client(server.address) as client:
                assert client.do("echo", payload, timeout=30) == payload
        sizes = {(e.kind, e.name): e.arg("data") for e in t.events if e.arg("data")}
        assert sizes[("in", "SUBMIT_JOB")] == sizes[("out", "JOB_ASSIGN_UNIQ")] == "262,144 B"
        assert sizes[("in", "WORK_COMPLETE")] == sizes[("out", "WORK_COMPLETE")] == "262,144 B"


def test_admin_lines_are_lanes_only_when_asked():
    with gearnb_server() as server:
        for admin_lanes in (False, True):
            with trace(server, admin=admin_lanes) as t:
                with gearnb.Admin(server.address) as admin:
                    admin.status()
                with gearnb.Client(server.address) as client:
                    client.echo(b"ping")
            names = [e.name for e in t.events if e.kind == "in"]
            assert names == (["text", "OPTION_REQ", "ECHO_REQ"] if admin_lanes else ["OPTION_REQ", "ECHO_REQ"])
            if admin_lanes:
                assert t.lanes[0].role == "admin" and t.events[0].detail == "status"


def test_overlapping_traces_each_see_their_own_span():
    with gearnb_server() as server, gearnb.Client(server.address) as client:
        with trace(server) as outer:
            client.echo(b"one")
            with trace(server) as inner:
                client.echo(b"two")
            client.echo(b"three")
        assert server.job_server.tracer is None
    echoes = lambda t: [e.arg("data") for e in t.events if e.name == "ECHO_REQ"]  # noqa: E731
    assert echoes(inner) == ["3 B 'two'"]
    assert echoes(outer) == ["3 B 'one'", "3 B 'two'", "5 B 'three'"]


def test_event_lines_round_trip():
    event = PacketEvent(7, 12.5, 3, "out", "WORK_DATA", (b"H:a b:1", b"x=%\t\0\xff \n"), 15, 12, "::1",
                        "id with spaces")
    line = event.to_line()
    assert "\n" not in line and PacketEvent.from_line(line) == event
    assert event.args == (("handle", "H:a b:1"), ("data", "7 B"))  # not all printable: its size only
    closed = PacketEvent(8, 13.0, 3, "closed", "")
    assert PacketEvent.from_line(closed.to_line()) == closed and closed.arg("handle", "none") == "none"
    with pytest.raises(ValueError):
        PacketEvent.from_line("OK tracing")


def test_trace_refuses_what_it_cannot_trace(gearmand_address):
    with pytest.raises(TypeError, match="host:port"):
        trace(object())
    with pytest.raises(RuntimeError, match="gearmand has none"):
        trace(gearmand_address).start()  # gearmand answers ERR UNKNOWN_COMMAND


def test_a_failing_listener_never_breaks_the_server():
    def broken(event):
        raise RuntimeError("listener bug")

    with gearnb_server() as server, gearnb.Client(server.address) as client:
        from gearnb.visual import PacketTap

        tap = PacketTap(server, broken)
        tap.start()
        assert client.echo(b"still served") == b"still served"
        assert server.job_server.tracer is None  # the failing listener was dropped, and with it the hub
        tap.stop()


def test_a_trace_outliving_its_server_still_ends():
    with gearnb_server() as server:
        t = trace(server).start()
    assert server.job_server.tracer is not None  # the server went first
    t.stop()
    assert server.job_server.tracer is None
