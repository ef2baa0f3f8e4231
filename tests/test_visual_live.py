"""Live views in a real Jupyter kernel: the picture's widget is updated from the view's
thread while a cell blocks the kernel's main thread (the moment it is meant to move), on
the ipykernel installed here (7.x: its threads and comms changed, ipywidgets#4001)."""

from __future__ import annotations

from typing import Any



def test_cluster_view_moves_while_a_cell_waits(kernel):
    opened = kernel.run("""
        import threading, time
        import gearnb
        from gearnb.server import Server
        from gearnb.visual import cluster_view

        server = Server("127.0.0.1", 0).start_in_thread()
        gate = threading.Semaphore(0)

        def count(job):
            job.send_status(1, 2)
            assert gate.acquire(timeout=60)
            return b"counted"

        worker = gearnb.Worker(server.address, client_id="gated")
        worker.register("count", count)
        threading.Thread(target=worker.work, daemon=True).start()
        view = cluster_view(server, interval=0.05)
        view
    """)
    states: dict[str, dict[str, Any]] = {}  # each widget's state: its comm_open, then its updates
    for m in opened:
        content = m["content"]
        if m["msg_type"] == "comm_open":
            states[content["comm_id"]] = dict(content["data"]["state"])
        elif m["msg_type"] == "comm_msg" and content["data"].get("method") == "update":
            states[content["comm_id"]].update(content["data"]["state"])
    (box,) = [c for c, s in states.items() if "gearnb-live" in s.get("_dom_classes", [])]
    picture = states[box]["children"][1].removeprefix("IPY_MODEL_")
    assert states[picture]["_model_name"] == "HTMLModel"
    shown = [m["content"]["data"] for m in opened if m["msg_type"] in ("display_data", "execute_result")]
    assert [d["application/vnd.jupyter.widget-view+json"]["model_id"] for d in shown] == [box]

    # The cell blocks this kernel's main thread while three jobs run one after the other.
    during = kernel.run("""
        def until(condition, what):
            deadline = time.monotonic() + 30
            while not condition():
                assert time.monotonic() < deadline, what
                time.sleep(0.02)

        client = gearnb.Client(server.address)
        handles = [client.do_background("count", str(i), unique=str(i)) for i in range(3)]
        for handle in handles:
            until(lambda: view.snapshot.job(handle) is not None and view.snapshot.job(handle).numerator == 1,
                  "the picture showing the job running")
            gate.release()
        until(lambda: view.snapshot.function("count").total == 0, "the queue draining")
        until(lambda: len(view.finished) == 3, "the picture seeing the last job end")
        time.sleep(0.3)  # a few more polls: the last picture reaches the widget
        print(" ".join(h.decode() for h in handles))
    """)
    handles = "".join(m["content"]["text"] for m in during if m["msg_type"] == "stream").split()
    updates = [m for m in during if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == picture
               and m["content"]["data"].get("method") == "update" and "value" in m["content"]["data"]["state"]]
    pictures = [m["content"]["data"]["state"]["value"] for m in updates]
    assert len(set(pictures)) >= 4, len(pictures)
    # Each job was drawn running (its 1/2 status bar next to its handle) while the cell waited.
    for handle in handles:
        assert any(f"{handle} count" in p and "1/2" in p for p in pictures), handle
    assert "finished, in order</text>" in pictures[-1] and all(h in pictures[-1] for h in handles)
    kernel.run("view.stop(); worker.stop(); server.stop_in_thread()")
