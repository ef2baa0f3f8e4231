"""pyexec: the envelope, signatures and what a worker refuses (no job server needed for most)."""

from __future__ import annotations

import sys

import msgpack
import numpy as np
import pytest

import gearnb
from gearnb.pyexec import envelope, taskio
from gearnb.buffers import BufferList
from gearnb.pyexec import signing
from gearnb.pyexec.keys import BadKey, key_from_text, load_key
from gearnb.pyexec.runner import PyexecRunner
from gearnb.pyexec.signing import CALL_LABEL, MAGIC, PREFIX_SIZE, RESULT_LABEL, CallId, RefusedPayload, Signer
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
    return Signer(key).sign_call(function, [body])[0]


def result_body(answer, payload, function=b"pyexec"):
    """The verified body of the worker's ``answer`` to the call ``payload``, as a caller checks it."""
    _, call = Signer(KEY).verify_call(function, payload)
    return Signer(KEY).verify_result(function, answer, call)


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
    assert msg["af"] == envelope.PICKLED and len(msg["zb"]) == 1 and len(msg["zb"][0]) == 8000
    (args, kwargs), = envelope.call_arguments(envelope.decode_call(body))
    assert np.array_equal(args[0], array) and args[1] == (1, 2)


def test_runner_calls_and_captures_output():
    def f(x, y=0):
        print("hello", x)
        gearnb.report(1, 2)
        return x + y

    payload = call_payload(f, 2, y=3)
    runner, job, answer, failed = run(payload)
    assert not failed
    result = envelope.decode_result(result_body(answer, payload))
    assert result["values"] == [5]
    # The output goes in one batch at the end of the job (gearnb.pyexec.taskio), tagged with its call.
    batch = taskio.encode_batch(0, [(0, taskio.STDOUT, b"hello 2\n")])
    assert ("data", batch) in job.sent and ("status", (1, 2)) in job.sent


def test_function_cache_and_need_code():
    def f(x):
        return x * 3

    runner = PyexecRunner(KEY)
    no_code = call_payload(f, 1, with_code=False)
    answer = runner(FakeJobForRunner(no_code))
    assert envelope.decode_result(result_body(answer, no_code)).get("need_code")
    runner(FakeJobForRunner(call_payload(f, 1)))  # now cached by digest
    no_code = call_payload(f, 1, with_code=False)  # a new call: the first one would be a replay
    answer = runner(FakeJobForRunner(no_code))
    assert envelope.decode_result(result_body(answer, no_code))["values"] == [3]


def test_remote_exception_keeps_type_and_traceback():
    def f():
        raise KeyError("missing")

    payload = call_payload(f)
    _, _, answer, failed = run(payload)
    assert failed
    msg = envelope.decode_result(result_body(answer, payload))
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

    payload = call_payload(f)
    _, _, answer, _ = run(payload)
    exc = envelope.rebuild_error(envelope.decode_result(result_body(answer, payload))["e"][0])
    assert isinstance(exc, gearnb.RemoteError) and "Weird" in exc.type_name


EXECUTED = []


def _mark():
    # This module's own list, also from a copy of this function sent by value (gearnb sends the
    # functions of modules outside site-packages by value: gearnb/pyexec/usercode.py).
    sys.modules[__name__].EXECUTED.append(1)
    return "ran"


def _a_result_as_a_call():
    """A correctly signed result (of a call to _mark) sent as if it were a call."""
    payload = call_payload(_mark)
    answer = run(payload)[2]
    EXECUTED.clear()
    return answer


@pytest.mark.parametrize("case", ["unsigned", "wrong-key", "truncated", "flipped", "other-function", "empty",
                                  "header-changed", "result-as-call"])
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
        "header-changed": good[:PREFIX_SIZE - 4] + (2**32 - 1).to_bytes(4, "big") + good[PREFIX_SIZE:],  # ttl
        "result-as-call": _a_result_as_a_call(),
    }[case]
    function = "pyexec2" if case == "other-function" else "pyexec"
    _, _, answer, failed = run(payload, function)
    assert failed and answer.startswith(b"gearnb worker refused the job")
    assert EXECUTED == []


def test_version_mismatch_names_both_versions():
    body = msgpack.packb({"v": envelope.FORMAT_VERSION, "py": "3.2", "cp": "0.1", "fd": b"x" * 16, "ch": False,
                          "a": []})
    payload = Signer(KEY).sign_call(b"pyexec", [body])[0]
    _, _, answer, failed = run(payload)
    assert failed
    exc = envelope.rebuild_error(envelope.decode_result(result_body(answer, payload))["fail"])
    assert isinstance(exc, gearnb.VersionMismatch)
    assert "3.2" in str(exc) and envelope.PYTHON_VERSION in str(exc) and envelope.CLOUDPICKLE_VERSION in str(exc)


def test_keys(tmp_path, monkeypatch):
    assert key_from_text("ab" * 16) == bytes.fromhex("ab" * 16)
    assert key_from_text(" AB" * 1 + "ab" * 15 + "\n") == bytes.fromhex("ab" * 16)
    for bad in ("short", "a", "ab" * 15, "zz" * 16, "abc" * 11):  # not hex, too short, odd length
        with pytest.raises(BadKey, match="gearnb key new"):
            key_from_text(bad)
    for bad in (b"", b"a", b"x" * 15):
        with pytest.raises(ValueError, match="gearnb key new|needs the cluster key"):
            Signer(bad)
        with pytest.raises(ValueError, match="gearnb key new|needs the cluster key"):
            gearnb.Executor("127.0.0.1:1", key=bad)
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
    import hashlib
    import hmac

    body = msgpack.packb({"v": envelope.FORMAT_VERSION})
    old = b"GNB2" + hmac.new(KEY, b"pyexec\0" + body, hashlib.sha256).digest() + body  # as GNB2 signed it
    with pytest.raises(RefusedPayload, match=r"older gearnb \(scheme GNB2, this one uses GNB3\).*same gearnb version"):
        Signer(KEY).verify_call(b"pyexec", old)
    with gearnb_server() as server, WorkerProcesses(server.address, processes=1, key=KEY):
        with gearnb.Client(server.address) as client:
            with pytest.raises(gearnb.JobException, match="older gearnb"):
                client.do("pyexec", old, timeout=20)


def test_worker_refuses_a_result_signed_with_another_key():
    """The caller never unpickles an answer that is not signed with its key."""
    def answer(job):  # echoes the call's header, as a worker with another key would
        return Signer(b"o" * 32).sign_result(b"pyexec", CallId(bytes(32), job.data[36:PREFIX_SIZE]), [b"\x80"])

    with gearnb_server() as server:
        with worker_thread(server.address, {"pyexec": answer}):
            ex = gearnb.Executor(server.address, key=KEY)
            with pytest.raises(RefusedPayload, match="not signed"):
                ex.submit(abs, 1).result(20)
            ex.shutdown()


def test_large_buffers_travel_framed_and_are_read_in_place():
    array = np.arange(envelope.FRAME_MIN // 4, dtype=np.float64)  # 2 x FRAME_MIN bytes
    payload = call_payload(lambda a, b: (a * 2, b, a), array, np.ones(3, dtype=np.int8))
    assert payload[PREFIX_SIZE] == envelope.FRAME_MARKER  # not a plain msgpack body
    runner, job, answer, failed = run(payload)
    assert not failed
    assert answer[PREFIX_SIZE] == envelope.FRAME_MARKER
    doubled, ones, same = envelope.decode_result(result_body(answer, payload))["values"][0]
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
    assert msgpack.unpackb(Signer(KEY).verify_call(b"pyexec", small)[0], raw=False)["af"] == envelope.PICKLED


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
    payload = Signer(KEY).sign_call(b"pyexec", parts)[0]
    runner, job, answer, failed = run(payload)
    result = envelope.decode_result(result_body(answer, payload))
    assert not failed and result["values"] == [4, 10, 18]


def _expected_mac(label, context, body, key=KEY, function=b"pyexec"):
    """The MAC as signing.py's docstring specifies it, computed with the standard library."""
    import hashlib
    import hmac

    if len(body) < signing.TREE_MIN:
        mode = b"F" + body
    else:
        mode = b"T" + len(body).to_bytes(8, "big") + b"".join(
            hashlib.sha256(body[i:i + signing.TREE_CHUNK]).digest() for i in range(0, len(body), signing.TREE_CHUNK))
    return hmac.new(key, label + b"\0" + function + b"\0" + context + mode, hashlib.sha256).digest()


def test_signer_is_hmac_sha256_over_label_function_context_and_body():
    for key in (b"k" * 16, b"s" * 32, b"x" * 64, b"long key " * 20):
        signer = Signer(key)
        for body in (b"", b"abc", bytes(range(256)) * 100):
            payload, call = signer.sign_call(b"pyexec", [body])
            header = payload[36:PREFIX_SIZE]
            assert payload == MAGIC + call.mac + header + body and call.header == header
            assert call.mac == _expected_mac(CALL_LABEL, header, body, key)
            again, call2 = signer.sign_call(b"pyexec", [body[:3], memoryview(body)[3:]])
            assert again[PREFIX_SIZE:] == body and call2.nonce != call.nonce  # a fresh nonce each time
            result = signer.sign_result(b"pyexec", call, [body[:3], body[3:]])
            assert result == MAGIC + _expected_mac(RESULT_LABEL, call.mac + header, body, key) + header + body
            assert result == b"".join(signer.signed_result_parts(b"pyexec", call, [body[:3], body[3:]]))
            assert signer.verify_result(b"pyexec", result, call) == body


def test_results_are_bound_to_their_call():
    """Row 1 of issue 15: a result kept from one call is refused as the answer to another,
    and a result is never a call (nor a call a result)."""
    signer = Signer(KEY)
    first, first_call = signer.sign_call(b"pyexec", [b"check('s3cret')"])
    second, second_call = signer.sign_call(b"pyexec", [b"check('hunter2')"])
    kept = signer.sign_result(b"pyexec", first_call, [b"True"])
    assert signer.verify_result(b"pyexec", kept, first_call) == b"True"
    with pytest.raises(RefusedPayload, match="not the result of this call"):
        signer.verify_result(b"pyexec", kept, second_call)
    # the kept result with the second call's header pasted in: the MAC still names the first call
    pasted = kept[:36] + second[36:PREFIX_SIZE] + kept[PREFIX_SIZE:]
    with pytest.raises(RefusedPayload, match="not signed with this cluster's key"):
        signer.verify_result(b"pyexec", pasted, second_call)
    with pytest.raises(RefusedPayload, match="result sent as a call"):
        signer.verify_call(b"pyexec", kept)
    with pytest.raises(RefusedPayload):
        signer.verify_result(b"pyexec", second, second_call)  # the call itself, sent back as its result
    with pytest.raises(RefusedPayload):
        signer.verify_result(b"other", kept, first_call)  # answered for another function


def test_large_bodies_are_maced_over_their_chunk_digests():
    """From TREE_MIN bytes on, the MAC covers the SHA-256 digests of the body's TREE_CHUNK
    pieces (hashed in threads), however the body is cut into parts."""
    rng = np.random.default_rng(3)
    signer = Signer(KEY)
    for size in (signing.TREE_MIN - 1, signing.TREE_MIN, signing.TREE_MIN + signing.TREE_CHUNK // 3,
                 3 * signing.TREE_MIN + 7):
        body = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        cuts = sorted({0, 5, signing.TREE_CHUNK - 1, signing.TREE_CHUNK, size // 2, size - 3, size})
        parts = [memoryview(body)[a:b] for a, b in zip(cuts, cuts[1:])]
        parts.insert(2, b"")  # an empty part changes nothing
        signed, call = signer.sign_call(b"pyexec", parts)
        assert call.mac == _expected_mac(CALL_LABEL, call.header, body)
        assert signed == MAGIC + call.mac + call.header + body
        assert signer.verify_call(b"pyexec", signed) == (body, call)
        result = b"".join(signer.signed_result_parts(b"pyexec", call, parts))
        assert result == signer.sign_result(b"pyexec", call, [body])
        assert signer.verify_result(b"pyexec", result, call) == body
        tampered = bytearray(signed)
        tampered[len(signed) // 2] ^= 1  # one bit in a middle chunk
        with pytest.raises(RefusedPayload):
            signer.verify_call(b"pyexec", bytes(tampered))
        with pytest.raises(RefusedPayload):  # replayed to another function
            signer.verify_call(b"other", signed)


def test_a_small_body_never_verifies_under_a_large_bodys_mac():
    """Row 3 of issue 15: the large body's MAC input (mode T, length, chunk digests) is not the
    input of any small body: neither the digests nor the digests with the mode's bytes in front
    verify as a small body under that MAC."""
    import hashlib

    signer = Signer(KEY)
    body = bytes(signing.TREE_MIN)
    signed, call = signer.sign_call(b"pyexec", [body])
    digests = b"".join(hashlib.sha256(body[i:i + signing.TREE_CHUNK]).digest()
                       for i in range(0, len(body), signing.TREE_CHUNK))
    for forged_body in (len(body).to_bytes(8, "big") + digests, b"T" + len(body).to_bytes(8, "big") + digests,
                        b"\0tree" + len(body).to_bytes(8, "big") + digests):
        forged = signed[:PREFIX_SIZE] + forged_body
        with pytest.raises(RefusedPayload, match="does not match"):
            signer.verify_call(b"pyexec", forged)


def test_sign_call_is_a_snapshot_of_the_array():
    """submit() signs and copies its argument at once: changing the array afterwards changes
    neither the payload nor its validity."""
    array = np.arange(signing.TREE_MIN // 8 * 2, dtype=np.float64)
    signer = Signer(KEY)
    parts = [b"head", memoryview(array).cast("B")]
    signed, call = signer.sign_call(b"pyexec", parts)
    array[:] = -1
    body, again = signer.verify_call(b"pyexec", signed)
    assert again == call
    assert np.array_equal(np.frombuffer(body[4:], dtype=np.float64), np.arange(array.size, dtype=np.float64))


# -- the replay guard (row 2 of issue 15): rules with the clock given ------------------------
def _call(created, ttl=signing.DEFAULT_CALL_TTL, nonce=None):
    import os

    header = signing.HEADER.pack(nonce or os.urandom(signing.NONCE_SIZE), int(created * 1e6), ttl)
    return CallId(bytes(32), header)


def test_replay_guard_rules():
    from gearnb.pyexec.replay import MAX_CLOCK_SKEW, ReplayGuard

    now = 1_800_000_000.0
    guard = ReplayGuard()
    call = _call(now - 5)
    guard.admit(call, b"H:a:1", now)
    with pytest.raises(RefusedPayload, match=r"ran on this worker before \(as job H:a:1, now H:b:9\)"):
        guard.admit(call, b"H:b:9", now + 1)  # the same call under a new job: a replay
    guard.admit(call, b"H:a:1", now + 2)  # the same job given back by its server (requeued): runs
    with pytest.raises(RefusedPayload, match=r"stale: made 24\.0 h ago, valid for 24\.0 h"):
        guard.admit(_call(now - 24 * 3600 - 1), b"H:a:2", now)
    guard.admit(_call(now - 3 * 3600, ttl=4 * 3600), b"H:a:3", now)  # a background call given 4 h
    guard.admit(_call(now + MAX_CLOCK_SKEW - 1), b"H:a:4", now)  # a caller's clock a little ahead
    with pytest.raises(RefusedPayload, match="in the future"):
        guard.admit(_call(now + MAX_CLOCK_SKEW + 60), b"H:a:5", now)
    assert len(guard) == 3


def test_replay_guard_forgets_no_call_it_ran():
    """The seen-set is bounded; a call it no longer remembers expires at or below the horizon
    and is refused, so no call ever runs twice on one worker process. Calls signed with a long
    ttl outlive a flood of ordinary ones, and expired calls are forgotten without a horizon."""
    from gearnb.pyexec.replay import BUCKET_SECONDS, SEEN_CAPACITY, ReplayGuard

    now = 1_800_000_000.0
    guard = ReplayGuard()
    background = _call(now - 7200, ttl=48 * 3600)  # a background call made 2 h ago, valid for 2 days
    guard.admit(background, b"H:bg", now)
    flood = [_call(now - 600 + i * 1e-2) for i in range(SEEN_CAPACITY + 10)]
    for i, call in enumerate(flood):
        guard.admit(call, b"H:%d" % i, now)
    assert len(guard) <= SEEN_CAPACITY and guard.horizon > float("-inf")
    with pytest.raises(RefusedPayload, match="forgot the older ones"):
        guard.admit(flood[0], b"H:again", now)  # forgotten, so refused by the horizon
    with pytest.raises(RefusedPayload, match="ran on this worker before"):
        guard.admit(flood[-1], b"H:again", now)  # still remembered
    with pytest.raises(RefusedPayload, match="ran on this worker before"):
        guard.admit(background, b"H:again", now)  # the long-lived call is still remembered
    guard.admit(_call(now), b"H:fresh", now)  # a new call expires after the horizon: runs
    guard.admit(_call(now - 3 * 3600, ttl=48 * 3600), b"H:bg2", now)  # so does another long-lived one
    # calls that all expired are forgotten without moving the horizon
    expiring = ReplayGuard()
    for i in range(SEEN_CAPACITY):
        expiring.admit(_call(now - 100, ttl=200), b"H:e%d" % i, now)
    later = now + 100 + 2 * BUCKET_SECONDS
    expiring.admit(_call(later - 10), b"H:x", later)
    assert expiring.horizon == float("-inf") and len(expiring) == 1


def test_replay_guard_takes_a_fast_stream_of_fresh_calls():
    """A worker running 10,000 calls a second (more than gearnb's fastest) never refuses a
    fresh one: the calls it forgets expire seconds before the ones arriving."""
    from gearnb.pyexec.replay import SEEN_CAPACITY, ReplayGuard

    start = 1_800_000_000.0
    guard = ReplayGuard()
    for i in range(SEEN_CAPACITY * 3 // 2):
        now = start + i / 10_000
        guard.admit(_call(now - 0.01), b"H:%d" % i, now)  # signed 10 ms before it runs
    assert SEEN_CAPACITY - 10_000 <= len(guard) <= SEEN_CAPACITY
    with pytest.raises(RefusedPayload, match="forgot the older ones"):
        guard.admit(_call(start - 0.01), b"H:late", now)


def test_replay_guard_memory_is_bounded():
    import tracemalloc

    from gearnb.pyexec.replay import SEEN_CAPACITY, ReplayGuard

    now = 1_800_000_000.0
    calls = [_call(now - 1000 + i * 1e-3) for i in range(SEEN_CAPACITY + 1000)]
    tracemalloc.start()
    guard = ReplayGuard()
    for i, call in enumerate(calls):
        guard.admit(call, b"H:gearnb-host:%d" % i, now)  # handles as long as a server's, kept too
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(guard) <= SEEN_CAPACITY
    print(f"seen-set: {len(guard)} calls, {size / 1e6:.1f} MB traced (nonces, handles, dicts)")
    assert size < 12e6


def test_a_workers_unsigned_refusal_is_shown_as_text():
    from gearnb.pyexec.signing import worker_refusal

    signed_reason = RefusedPayload("the answer is not the result of this call")
    text = worker_refusal(b"gearnb worker refused the job: \x1b[2Jthe call is stale", signed_reason)
    assert str(text) == "gearnb worker refused the job: \\x1b[2Jthe call is stale"
    older = worker_refusal(b"gearnb worker refused the job: the payload is not a signed gearnb pyexec payload",
                           signed_reason)
    assert "a worker of an older gearnb says this of a GNB3 payload: run the same gearnb version" in str(older)
    assert worker_refusal(MAGIC + bytes(60), signed_reason) is signed_reason  # signed-looking: the real reason


def test_nonces_are_unique_across_calls_threads_and_forks():
    """A forked child (a worker pool, a multiprocessing caller) never repeats its parent's nonces."""
    import os
    import threading

    signer = Signer(KEY)
    nonces = [signer.sign_call(b"pyexec", [b"x"])[1].nonce for _ in range(1000)]
    def sign_some(out):
        out.extend(signer.sign_call(b"pyexec", [b"x"])[1].nonce for _ in range(1000))
    threads = [threading.Thread(target=sign_some, args=(nonces,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next nonces, to the parent
        os.close(read)
        os.write(write, b"".join(signer.sign_call(b"pyexec", [b"x"])[1].nonce for _ in range(100)))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    nonces += [child[i:i + 16] for i in range(0, len(child), 16)]
    nonces += [signer.sign_call(b"pyexec", [b"x"])[1].nonce for _ in range(100)]  # the parent goes on
    assert len(nonces) == 5200 and len(set(nonces)) == 5200


def test_a_call_run_before_is_answered_not_run_signed_for_it():
    """Rules 2-4 concern a genuine call: the answer is signed for that call (its caller can
    trust it and send the work again as a new call, a bounded number of times); rule 1 and
    everything unverified stay plain text."""
    from gearnb.pyexec.signing import MAX_SIGN_AGAIN

    EXECUTED.clear()
    runner = PyexecRunner(KEY)
    payload = call_payload(_mark)
    runner(FakeJobForRunner(payload))
    again = FakeJobForRunner(payload)
    again.handle = b"H:test:2"
    with pytest.raises(gearnb.WorkException) as refused:
        runner(again)
    assert EXECUTED == [1]
    _, call = Signer(KEY).verify_call(b"pyexec", payload)
    msg = envelope.decode_result(Signer(KEY).verify_result(b"pyexec", refused.value.data, call))
    assert msg["not_run"].startswith("gearnb worker did not run the job: the call ran on this worker before")
    with pytest.raises(envelope.SignAgain, match="ran on this worker before"):
        envelope.raise_if_not_run(msg, call)
    with pytest.raises(RefusedPayload, match=r"ran on this worker before.*\(sent 4 times, as a new call each time\)"):
        envelope.raise_if_not_run(msg, call._replace(attempt=MAX_SIGN_AGAIN))
    later = Signer(KEY).sign_call(b"pyexec", [b"x"], after=call._replace(attempt=1))[1]
    assert later.attempt == 2
