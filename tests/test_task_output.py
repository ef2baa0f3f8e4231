"""Task output that scales and tells the truth (gearnb/pyexec/taskio.py, the executor's side):
each line tagged with the map item that printed it, whatever the chunking; a job's output in
few WORK_DATA batches; the lines of one item together; a task's output cut at its limit with a
note; 10,000 lines into a real Jupyter kernel in few output messages. Real worker processes
behind a real job server (gearnb.local), and a real kernel (tests/kernels.py)."""

from __future__ import annotations

import re
import sys
import threading

import pytest

import gearnb
from gearnb.pyexec import envelope, taskio
from gearnb.pyexec.runner import PyexecRunner
from gearnb.pyexec.signing import Signer

KEY = b"o" * 32
TAG = re.compile(r"^\[(\w+) #(\d+)\] (.*)$")


class RecordingJob:
    """The job a runner is given, without a socket: it keeps what the task sends, in order."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.function = "pyexec"
        self.handle = b"H:test:1"
        self.server = ""
        self.sent: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def send_data(self, data: bytes) -> None:
        with self.lock:
            self.sent.append(("data", taskio.decode_batch(data)))

    def send_warning(self, data: bytes) -> None:
        self.sent.append(("warning", data))

    def send_status(self, n: int, d: int) -> None:
        self.sent.append(("status", (n, d)))


def run_chunk(fn, items, options=None):
    blob = envelope.FunctionBlob(fn)
    body = b"".join(envelope.encode_map_chunk(blob, [list(items)], with_code=True, options=options))
    payload, call = Signer(KEY).sign_call(b"pyexec", [body])
    job = RecordingJob(payload)
    answer = PyexecRunner(KEY)(job)
    result = envelope.decode_result(Signer(KEY).verify_result(b"pyexec", answer, call))
    return job, result


def test_a_short_chunk_sends_its_output_in_one_batch_tagged_by_call():
    def chatty(x):
        for j in range(3):
            print(f"{x}.{j}")
        print("oops", x, file=sys.stderr)
        return x

    job, result = run_chunk(chatty, range(5))
    assert result["values"] == [0, 1, 2, 3, 4]
    batches = [payload for kind, payload in job.sent if kind == "data"]
    assert len(batches) == 1, job.sent  # 20 lines, one WORK_DATA
    done, records = batches[0]
    out = [(offset, text.decode()) for offset, stream, text in records if stream == taskio.STDOUT]
    err = [(offset, text.decode()) for offset, stream, text in records if stream == taskio.STDERR]
    assert out == [(x, f"{x}.0\n{x}.1\n{x}.2\n") for x in range(5)]
    assert err == [(x, f"oops {x}\n") for x in range(5)]
    start, end, host, worker_pid, task_pid = result["tm"]
    assert start <= end and worker_pid == task_pid  # a runner in this process: no task process


def test_a_long_chunk_reports_items_done_and_keeps_each_items_lines_together():
    import time

    def slow(x):
        print(f"start {x}")
        time.sleep(0.15)
        print(f"end {x}")
        return x

    job, result = run_chunk(slow, range(6))  # about 0.9 s: several report intervals
    assert result["values"] == list(range(6))
    batches = [payload for kind, payload in job.sent if kind == "data"]
    assert len(batches) >= 3, batches
    dones = [done for done, _ in batches]
    assert dones == sorted(dones) and dones[0] < 6 and len(set(dones)) >= 3, dones
    # Every item's two lines arrive in the same batch: a batch takes only finished items.
    for _, records in batches:
        texts = {}
        for offset, _, text in records:
            texts[offset] = texts.get(offset, b"") + text
        for offset, text in texts.items():
            assert text == f"start {offset}\nend {offset}\n".encode(), batches
    assert sorted(o for _, records in batches for o, _, _ in records) == list(range(6))


def test_a_task_that_prints_megabytes_is_cut_with_a_note():
    def flood(x):
        line = "y" * 99 + "\n"
        for _ in range(50_000):  # 5,000,000 characters
            sys.stdout.write(line)
        return x

    job, result = run_chunk(flood, [0, 1], options={"ol": 10_000})
    assert result["values"] == [0, 1]
    text = {0: "", 1: ""}
    for kind, (done, records) in job.sent:
        for offset, _, chunk in records:
            text[offset] += chunk.decode()
    for offset in (0, 1):
        kept, note = text[offset][:10_000], text[offset][10_000:]
        assert kept == ("y" * 99 + "\n") * 100
        assert note == taskio.truncation_note(4_990_000, 10_000), note
        assert "4,990,000 more characters" in note and "output_limit=10,000" in note


@pytest.fixture(scope="module")
def cluster():
    with gearnb.local(workers=2) as ex:
        yield ex


def printed(capsys, expected_lines: int, timeout: float = 30) -> list[str]:
    """What the executor wrote to this process's stdout, once ``expected_lines`` came."""
    from peers import wait_until

    out: list[str] = []

    def enough() -> bool:
        out.extend(capsys.readouterr().out.splitlines())
        return len(out) >= expected_lines

    wait_until(enough, timeout=timeout)
    return out


def test_each_line_is_tagged_with_the_item_that_printed_it(cluster, capsys):
    def chatty(x):
        for j in range(4):
            print(f"line {j} of item {x}")
        return x

    assert cluster.gmap(chatty, range(200), chunksize=50) == list(range(200))
    lines = printed(capsys, 800)
    assert len(lines) == 800
    seen = {}
    for line in lines:
        label, item, text = TAG.match(line).groups()
        assert label == "chatty" and text.endswith(f"of item {item}"), line
        seen.setdefault(int(item), []).append(text)
    assert sorted(seen) == list(range(200))
    assert all(texts == [f"line {j} of item {x}" for j in range(4)] for x, texts in seen.items())


def test_output_limit_of_a_map_through_real_workers(cluster, capsys):
    def flood(x):
        print("z" * 5_000_000)
        return x

    assert cluster.gmap(flood, [7], output_limit=1000) == [7]
    lines = printed(capsys, 2)
    assert lines[0] == "[flood #0] " + "z" * 1000
    assert lines[1] == "[flood #0] " + taskio.truncation_note(5_000_001 - 1000, 1000).rstrip("\n")


# -- a real Jupyter kernel -------------------------------------------------------------------------
LINES_PER_ITEM = 10
ITEMS = 1000  # 10,000 lines


def test_ten_thousand_lines_reach_a_kernel_cell_in_few_messages_tagged_and_together(kernel):
    kernel.run("import gearnb\nwith gearnb.local(workers=2) as warm: pass")  # imports, off the clock
    msg_id = kernel.start(f"""
        import time
        import gearnb
        def chatty(x):
            for j in range({LINES_PER_ITEM}):
                print(f"line {{j}} of item {{x}}")
            time.sleep(0.002)  # the map lasts about a second: output comes over time
            return x
        with gearnb.local(workers=2) as ex:
            assert ex.gmap(chatty, range({ITEMS}), progress=False) == list(range({ITEMS}))
    """)
    messages = kernel.finish(msg_id, timeout=120)
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert not errors, errors
    streams = [m for m in messages if m["msg_type"] == "stream"]
    assert {m["parent_header"]["msg_id"] for m in streams} == {msg_id}
    lines = "".join(m["content"]["text"] for m in streams if m["content"]["name"] == "stdout").splitlines()
    assert len(lines) == ITEMS * LINES_PER_ITEM
    position: dict[int, list[int]] = {}
    for i, line in enumerate(lines):
        label, item, text = TAG.match(line).groups()
        assert label == "chatty" and text.endswith(f"of item {item}"), line
        position.setdefault(int(item), []).append(i)
    assert sorted(position) == list(range(ITEMS))
    # The lines of one item are together, in order.
    for item, where in position.items():
        assert where == list(range(where[0], where[0] + LINES_PER_ITEM)), (item, where)
        assert [lines[i] for i in where] == [f"[chatty #{item}] line {j} of item {item}"
                                              for j in range(LINES_PER_ITEM)]
    # Few messages: ipykernel sends a cell's output every 0.2 s; before batching this was
    # one message per line (10,000).
    print(f"{len(lines)} lines in {len(streams)} stream messages")
    assert len(streams) <= 100, len(streams)
