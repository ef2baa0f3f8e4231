"""pyexec: the envelope, signatures and what a worker refuses (no job server needed for most)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

import gearnb
from gearnb.pyexec import envelope
from gearnb.protocol.codec import BufferList
from gearnb.pyexec import keys
from gearnb.pyexec.keys import RefusedPayload, Signer, key_from_text, load_key
from gearnb.pyexec.runner import PyexecRunner
from peers import WorkerProcesses, gearnb_server, worker_thread

KEY = b"s" * 32


class FakeJobForRunner:
    """Not a mock of a peer: the Job object a runner gets, built without a socket."""

    def __init__(self, data: bytes, function: str = "pyexec") -> None:
        self.data = data
        self.function = function
        self.handle = b"H:test:1"
        self.sent: list[tuple[str, bytes]] = []

    def send_data(self, data):
        self.sent.append(("data", data))

    def send_warning(self, data):
        self.sent.append(("warning", data))

    def send_status(self, n, d):
        self.sent.append(("status", (n, d)))


def call_payload(fn, *args, key=KEY, function=b"pyexec", with_code=True, **kwargs):
    body = envelope.encode_call(envelope.FunctionBlob(fn), [(args, kwargs)], with_code=with_code, chunk=False)
    return Signer(key).sign(function, body)


def run(payload, function="pyexec", key=KEY):
    runner = PyexecRunner(key, function)
    job = FakeJobForRunner(payload, function)
    try:
        answer = runner(job)
        failed = False
    except gearnb.WorkException as exc:
        answer, failed = exc.data, True
    if isinstance(answer, BufferList):  # a large result, in pieces: joined as the wire does
        answer = b"".join(answer)
    return runner, job, answer, failed


def run_pieces(payload, function="pyexec"):
    return PyexecRunner(KEY, function)(FakeJobForRunner(payload, function))


def test_plain_arguments_travel_as_msgpack():
    body = envelope.encode_call(envelope.FunctionBlob(abs), [((1, "a", b"b", [1.5, None], {"k": True}), {})],
                                with_code=False, chunk=False)
    msg = msgpack.unpackb(body, raw=False)
    assert "af" not in msg  # not pickled
    assert msg["a"] == [[[1, "a", b"b", [1.5, None], {"k": True}], {}]]


def test_other_arguments_travel_as_pickles_with_oob_buffers():
    array = np.arange(1000, dtype=np.float64)
    body = envelope.encode_call(envelope.FunctionBlob(abs), [((array, (1, 2)), {})], with_code=False, chunk=False)
    msg = msgpack.unpackb(body, raw=False)
    assert msg["af"] == envelope.PICKLED and len(msg["ab"]) == 1 and len(msg["ab"][0]) == 8000
    (args, kwargs), = envelope.call_arguments(envelope.decode_call(body))
    assert np.array_equal(args[0], array) and args[1] == (1, 2)


def test_runner_calls_and_captures_output():
    def f(x, y=0):
        print("hello", x)
        gearnb.report(1, 2)
        return x + y

    runner, job, answer, failed = run(call_payload(f, 2, y=3))
    assert not failed
    result = envelope.decode_result(Signer(KEY).verify(b"pyexec", answer))
    assert result["values"] == [5]
    assert ("data", b"hello 2\n") in job.sent and ("status", (1, 2)) in job.sent


def test_function_cache_and_need_code():
    def f(x):
        return x * 3

    runner = PyexecRunner(KEY)
    no_code = call_payload(f, 1, with_code=False)
    answer = runner(FakeJobForRunner(no_code))
    assert envelope.decode_result(Signer(KEY).verify(b"pyexec", answer)).get("need_code")
    runner(FakeJobForRunner(call_payload(f, 1)))  # now cached by digest
    answer = runner(FakeJobForRunner(no_code))
    assert envelope.decode_result(Signer(KEY).verify(b"pyexec", answer))["values"] == [3]


def test_remote_exception_keeps_type_and_traceback():
    def f():
        raise KeyError("missing")

    _, _, answer, failed = run(call_payload(f))
    assert failed
    msg = envelope.decode_result(Signer(KEY).verify(b"pyexec", answer))
    exc = envelope.rebuild_error(msg["e"][0])
    assert isinstance(exc, KeyError)
    # The remote frames, by function name (newer cloudpickle names by-value code
    # "<dynamic-code>", so the source line itself may not be shown).
    assert ", in f\n" in exc.__cause__.tb and "KeyError: 'missing'" in exc.__cause__.tb
    # it starts at the user's function: gearnb's runner frame is left out
    assert "runner.py" not in exc.__cause__.tb and exc.__cause__.tb.count("  File ") == 1


def test_unpicklable_exception_becomes_remote_error():
    class Weird(Exception):
        def __reduce__(self):
            raise TypeError("no")

    def f():
        raise Weird("w")

    _, _, answer, _ = run(call_payload(f))
    exc = envelope.rebuild_error(envelope.decode_result(Signer(KEY).verify(b"pyexec", answer))["e"][0])
    assert isinstance(exc, gearnb.RemoteError) and "Weird" in exc.type_name


EXECUTED = []


def _mark():
    EXECUTED.append(1)
    return "ran"


@pytest.mark.parametrize("case", ["unsigned", "wrong-key", "truncated", "flipped", "other-function", "empty"])
def test_refused_payloads_never_run(case):
    EXECUTED.clear()
    good = call_payload(_mark)
    payload = {
        "unsigned": msgpack.packb({"v": 1}),
        "wrong-key": call_payload(_mark, key=b"x" * 32),
        "truncated": good[:20],
        "flipped": good[:-1] + bytes([good[-1] ^ 1]),
        "other-function": good,  # signed for "pyexec", replayed to "pyexec2"
        "empty": b"",
    }[case]
    function = "pyexec2" if case == "other-function" else "pyexec"
    _, _, answer, failed = run(payload, function)
    assert failed and answer.startswith(b"gearnb worker refused the job")
    assert EXECUTED == []


def test_version_mismatch_names_both_versions():
    body = msgpack.packb({"v": envelope.FORMAT_VERSION, "py": "3.2", "cp": "0.1", "fd": b"x" * 16, "ch": False,
                          "a": []})
    _, _, answer, failed = run(Signer(KEY).sign(b"pyexec", body))
    assert failed
    exc = envelope.rebuild_error(envelope.decode_result(Signer(KEY).verify(b"pyexec", answer))["fail"])
    assert isinstance(exc, gearnb.VersionMismatch)
    assert "3.2" in str(exc) and envelope.PYTHON_VERSION in str(exc) and envelope.CLOUDPICKLE_VERSION in str(exc)


def test_keys(tmp_path, monkeypatch):
    assert key_from_text("ab" * 16) == bytes.fromhex("ab" * 16)
    assert key_from_text("short") == b"short"
    monkeypatch.setenv("GEARNB_KEY", "cd" * 16)
    assert load_key() == bytes.fromhex("cd" * 16)
    path = tmp_path / "k"
    path.write_text("ef" * 16 + "\n")
    assert load_key(key_file=str(path)) == bytes.fromhex("ef" * 16)
    monkeypatch.delenv("GEARNB_KEY")
    assert load_key() is None
    with pytest.raises(ValueError, match="GEARNB_KEY"):
        gearnb.Executor("127.0.0.1:1").submit(abs, 1)


def test_refusals_through_a_real_server_and_worker_processes(tmp_path):
    """Unsigned and wrongly signed payloads reach a real worker process and are refused."""
    marker = tmp_path / "ran"
    with gearnb_server() as server, WorkerProcesses(server.address, processes=1, key=KEY):
        client = gearnb.Client(server.address)
        with pytest.raises(gearnb.JobException, match="refused"):
            client.do("pyexec", b"not signed")
        wrong = gearnb.Executor(server.address, key=b"w" * 32)
        with pytest.raises(RefusedPayload):
            wrong.submit(marker.write_text, "x").result(20)
        assert not marker.exists()
        right = gearnb.Executor(server.address, key=KEY)
        assert right.submit(marker.write_text, "x").result(20) == 1
        assert marker.exists()
        wrong.shutdown(), right.shutdown(), client.close()


def test_a_payload_of_an_older_signing_scheme_says_to_upgrade():
    """gearnb before the chunked MAC of large bodies signed as GNB1: a worker of this version
    tells the caller to run one version on both sides, not that the key is wrong."""
    body = msgpack.packb({"v": envelope.FORMAT_VERSION})
    old = b"GNB1" + Signer(KEY).mac(b"pyexec", body) + body  # small bodies: both schemes MAC alike
    with pytest.raises(RefusedPayload, match=r"older gearnb \(scheme GNB1, this one uses GNB2\).*same gearnb version"):
        Signer(KEY).verify(b"pyexec", old)
    with gearnb_server() as server, WorkerProcesses(server.address, processes=1, key=KEY):
        with gearnb.Client(server.address) as client:
            with pytest.raises(gearnb.JobException, match="older gearnb"):
                client.do("pyexec", old, timeout=20)


def test_worker_refuses_a_result_signed_with_another_key():
    """The caller never unpickles an answer that is not signed with its key."""
    with gearnb_server() as server:
        other = PyexecRunner(b"o" * 32)
        with worker_thread(server.address, {"pyexec": lambda job: other.signer.sign(b"pyexec", b"\x80")}):
            ex = gearnb.Executor(server.address, key=KEY)
            with pytest.raises(RefusedPayload, match="not signed"):
                ex.submit(abs, 1).result(20)
            ex.shutdown()


def test_large_buffers_travel_framed_and_are_read_in_place():
    from gearnb.pyexec.keys import MAC_SIZE, MAGIC

    array = np.arange(envelope.FRAME_MIN // 4, dtype=np.float64)  # 2 x FRAME_MIN bytes
    payload = call_payload(lambda a, b: (a * 2, b, a), array, np.ones(3, dtype=np.int8))
    assert payload[len(MAGIC) + MAC_SIZE] == envelope.FRAME_MARKER  # not a plain msgpack body
    runner, job, answer, failed = run(payload)
    assert not failed
    assert answer[len(MAGIC) + MAC_SIZE] == envelope.FRAME_MARKER
    doubled, ones, same = envelope.decode_result(Signer(KEY).verify(b"pyexec", answer))["values"][0]
    assert np.array_equal(doubled, array * 2) and np.array_equal(same, array)
    assert np.array_equal(ones, np.ones(3)) and ones.dtype == np.int8
    assert doubled.flags.aligned and same.flags.aligned
    base = np.frombuffer(answer, dtype=np.uint8)
    pieces = run_pieces(payload)  # the worker sends the result array's memory, not a copy of it
    assert isinstance(pieces, BufferList) and any(
        isinstance(p, memoryview) and p.nbytes == array.nbytes for p in pieces)
    assert np.shares_memory(doubled, base) and np.shares_memory(same, base)  # views, not copies
    # calls and results below FRAME_MIN stay one plain msgpack map (readable anywhere)
    small = call_payload(abs, np.arange(10.0))
    assert msgpack.unpackb(Signer(KEY).verify(b"pyexec", small), raw=False)["af"] == envelope.PICKLED


def test_framed_body_cut_short_is_refused():
    blob = envelope.FunctionBlob(abs)
    body = envelope.encode_call(blob, [((np.zeros(envelope.FRAME_MIN),), {})], with_code=False, chunk=False)
    with pytest.raises(ValueError):
        envelope.decode_call(body[:-8])


def test_map_chunks_travel_as_columns():
    blob = envelope.FunctionBlob(lambda x, y: x * y)
    parts = envelope.encode_map_chunk(blob, [[1, 2, 3], [4, 5, 6]], with_code=True)
    msg = envelope.decode_call(b"".join(parts))
    assert msg["c"] == [[1, 2, 3], [4, 5, 6]] and msg["ch"] is True
    assert envelope.call_columns(msg) == [[1, 2, 3], [4, 5, 6]]
    assert envelope.call_arguments(msg) == [([1, 4], {}), ([2, 5], {}), ([3, 6], {})]
    runner, job, answer, failed = run(Signer(KEY).sign_parts(b"pyexec", parts))
    result = envelope.decode_result(Signer(KEY).verify(b"pyexec", answer))
    assert not failed and result["values"] == [4, 10, 18]


def test_signer_is_hmac_sha256():
    import hashlib
    import hmac

    for key in (b"k", b"s" * 32, b"x" * 64, b"long key " * 20):
        signer = Signer(key)
        for body in (b"", b"abc", bytes(range(256)) * 100):
            expected = hmac.new(key, b"pyexec\0" + body, hashlib.sha256).digest()
            assert signer.mac(b"pyexec", body) == expected
            assert signer.mac_parts(b"pyexec", [body[:3], memoryview(body)[3:]]) == expected
            assert signer.sign_parts(b"pyexec", [body[:3], body[3:]]) == signer.sign(b"pyexec", body)


def test_large_bodies_are_maced_over_their_chunk_digests():
    """From TREE_MIN bytes on, the MAC is HMAC-SHA256 over the SHA-256 digests of the body's
    TREE_CHUNK pieces (hashed in threads), however the body is cut into parts."""
    import hashlib
    import hmac

    rng = np.random.default_rng(3)
    signer = Signer(KEY)
    for size in (keys.TREE_MIN - 1, keys.TREE_MIN, keys.TREE_MIN + keys.TREE_CHUNK // 3, 3 * keys.TREE_MIN + 7):
        body = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        if size < keys.TREE_MIN:
            message = b"pyexec\0" + body
        else:
            digests = b"".join(hashlib.sha256(body[i:i + keys.TREE_CHUNK]).digest()
                               for i in range(0, size, keys.TREE_CHUNK))
            message = b"pyexec\0\0tree" + size.to_bytes(8, "big") + digests
        expected = hmac.new(KEY, message, hashlib.sha256).digest()
        assert signer.mac(b"pyexec", body) == expected
        cuts = sorted({0, 5, keys.TREE_CHUNK - 1, keys.TREE_CHUNK, size // 2, size - 3, size})
        parts = [memoryview(body)[a:b] for a, b in zip(cuts, cuts[1:])]
        parts.insert(2, b"")  # an empty part changes nothing
        assert signer.mac_parts(b"pyexec", parts) == expected
        signed = signer.sign_parts(b"pyexec", parts)
        assert signed == signer.sign(b"pyexec", body) == b"".join(signer.signed_parts(b"pyexec", parts))
        assert signer.verify(b"pyexec", signed) == body
        tampered = bytearray(signed)
        tampered[len(signed) // 2] ^= 1  # one bit in a middle chunk
        with pytest.raises(RefusedPayload):
            signer.verify(b"pyexec", bytes(tampered))
        with pytest.raises(RefusedPayload):  # replayed to another function
            Signer(KEY).verify(b"other", signed)


def test_sign_parts_is_a_snapshot_of_the_array():
    """submit() signs and copies its argument at once: changing the array afterwards changes
    neither the payload nor its validity."""
    array = np.arange(keys.TREE_MIN // 8 * 2, dtype=np.float64)
    signer = Signer(KEY)
    parts = [b"head", memoryview(array).cast("B")]
    signed = signer.sign_parts(b"pyexec", parts)
    array[:] = -1
    body = signer.verify(b"pyexec", signed)
    assert np.array_equal(np.frombuffer(body[4:], dtype=np.float64), np.arange(array.size, dtype=np.float64))
