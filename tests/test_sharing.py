"""Large values through shared memory (gearnb/pyexec/sharing/), against real worker processes.

Real `gearnb worker` process trees (a worker and its task process each) through the gearnb
server and gearmand; real kill -9 of a caller, of a task process and of a worker process; a
task process in a network namespace of its own (where the caller's value store cannot be
reached, as from another host); forged and malformed references against a real value store.
What is checked: the bytes, where they travelled (the job's payload stays small when they are
shared), that a value a map passes to every call is shared and fetched once per task process,
and that afterwards no process holds a gearnb memfd (fd or mapping) and /dev/shm has nothing new.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import cloudpickle
import msgpack
import numpy as np
import pytest

import gearnb
from gearnb.pyexec import envelope, sharing
from gearnb.pyexec.signing import Signer
from peers import IN_CI, WorkerProcesses, descendants, wait_until

KEY = b"s" * 32
MEMFD_NAME = "memfd:gearnb-value"
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Without memfd and abstract sockets (not Linux) there is nothing to test; under CI=true the
# tests run anyway and fail, as peers.need() does for a missing peer.
pytestmark = pytest.mark.skipif(not sharing.available() and not IN_CI, reason="no memfd / abstract sockets here")


def _tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    return [root, *descendants(root)]


def memfds_held(pids: list[int]) -> dict[int, int]:
    """pid -> how many gearnb memfds it holds open or mapped (this process: once the garbage
    collector has run, as a future and its run refer to each other)."""
    gc.collect()
    held: dict[int, int] = {}
    for pid in pids:
        count = 0
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/" + MEMFD_NAME)
                except OSError:
                    continue
            with open(f"/proc/{pid}/maps") as maps:
                count += sum(MEMFD_NAME in line for line in maps)
        except OSError:  # gone
            continue
        if count:
            held[pid] = count
    return held


def dev_shm() -> set[str]:
    """What /dev/shm holds that shared memory of ours could be called: multiprocessing's
    SharedMemory names (psm_...) and anything named gearnb (other programs on a shared machine
    - multiprocessing semaphores, joblib folders - come and go meanwhile)."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return {name for name in os.listdir("/dev/shm") if name.startswith("psm_") or "gearnb" in name}


def task_pids(workers: WorkerProcesses) -> list[int]:
    assert workers.proc is not None
    return [pid for pid in _tree(workers.proc.pid) if pid != workers.proc.pid
            and pid not in workers.child_pids()]


@pytest.fixture
def cluster(server_address):
    with WorkerProcesses(server_address, processes=2, key=KEY) as workers:
        ex = gearnb.Executor(server_address, key=KEY)
        yield ex, workers
        ex.shutdown(wait=False)


def identity(a):
    return a


def store_value_count(ex: gearnb.Executor) -> int:
    return ex.calls.store.shared_count


def test_a_large_array_goes_there_and_back_through_shared_memory(cluster):
    ex, workers = cluster
    before = dev_shm()
    array = np.random.default_rng(7).random(4 * 1024 * 1024)  # 32 MiB
    future = ex.submit(identity, array)
    back = future.result(timeout=60)
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    sub = future.run.chunk.sub
    # Neither the call nor the answer carried the array: each held a reference to its memfd.
    assert len(sub.data) < 64 * 1024 and len(sub.result) < 64 * 1024
    # The task got the argument read-only (as from a job's payload) and returned it as it was:
    # the answer names the caller's own memfd, nothing was copied back.
    assert not back.flags.writeable and store_value_count(ex) >= 1
    # A new array comes back in a memfd of its own, mapped copy-on-write: writable, and private.
    doubled = ex.submit(lambda a: a * 2, array).result(timeout=60)
    assert np.array_equal(doubled, array * 2)
    doubled[0] = -1.0
    assert doubled[0] == -1.0 and array[0] != -1.0
    del doubled
    # A value passed to every call (and one captured by the function) is shared once, and each
    # task process fetches it once, whatever the number of chunks.
    store = ex.calls.store
    shared, fetches = store.shared_count, store.fetch_count
    data = np.arange(2 * 1024 * 1024, dtype=np.int64)  # 16 MiB, passed to each of 40 calls
    offset = np.full(1024 * 1024, 5, dtype=np.int64)  # 8 MiB, captured
    got = ex.gmap(lambda d, i: int(d[i * 1000] + offset[i]), [data] * 40, range(40), chunksize=2)
    assert got == [i * 1000 + 5 for i in range(40)]
    assert store.shared_count - shared == 2
    assert 2 <= store.fetch_count - fetches <= 2 * len(task_pids(workers))
    # An argument that does not pickle fails the submit, and shares nothing.
    with pytest.raises(TypeError):
        ex.submit(identity, [array, threading.Lock()])
    # The map ended: the caller released both, and the idle task processes dropped them.
    del back, future, sub
    wait_until(lambda: not memfds_held([os.getpid(), *_tree(workers.proc.pid)]), timeout=20)
    assert dev_shm() - before == set()


def test_a_worker_that_cannot_reach_the_callers_memory_gets_the_bytes_in_the_job(gearnb_address, tmp_path,
                                                                                  monkeypatch):
    """Task processes in a network namespace of their own (abstract Unix sockets belong to a
    network namespace) cannot reach the caller's value store, as a worker on another host: the
    call is answered "send it inline" and sent again with the bytes, and the result comes back
    in the job."""
    if os.geteuid() != 0:
        message = "a network namespace needs root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import ctypes, os, sys
        if os.environ.get("GEARNB_TEST_TASKS_NETNS") and "gearnb.pyexec.isolation" in sys.orig_argv:
            if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    """))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("GEARNB_TEST_TASKS_NETNS", "1")
    with WorkerProcesses(gearnb_address, processes=1, key=KEY) as workers:
        (task,) = wait_until(lambda: task_pids(workers), timeout=30)
        assert os.readlink(f"/proc/{task}/ns/net") != os.readlink("/proc/self/ns/net")
        ex = gearnb.Executor(gearnb_address, key=KEY)
        try:
            array = np.random.default_rng(3).random(2 * 1024 * 1024)  # 16 MiB
            future = ex.submit(identity, array)
            assert np.array_equal(future.result(timeout=60), array)
            assert future.run.chunk.inline  # asked for it inline once
            sub = future.run.chunk.sub
            assert len(sub.data) > array.nbytes and len(sub.result) > array.nbytes
        finally:
            ex.shutdown(wait=False)


CALLER = """
import sys, time, numpy as np, gearnb
ex = gearnb.Executor(sys.argv[1], key=bytes.fromhex(sys.argv[2]))
flag = sys.argv[3]
def hold(a, flag):
    import os, pathlib, time
    pathlib.Path(flag).write_text(str(os.getpid()))
    time.sleep(2)
    return a * 2
print(float(ex.submit(hold, np.ones(4 * 1024 * 1024), flag).result().sum()), flush=True)
"""


def test_kill_9_of_the_caller_leaves_no_shared_memory(gearnb_address, tmp_path):
    before = dev_shm()
    flag = tmp_path / "running"
    with WorkerProcesses(gearnb_address, processes=1, key=KEY) as workers:
        caller = subprocess.Popen([sys.executable, "-c", CALLER, gearnb_address, KEY.hex(), str(flag)])
        try:
            wait_until(flag.exists, timeout=60)
            task = int(wait_until(lambda: flag.read_text(), timeout=10))
            assert memfds_held([task])  # the task maps the caller's argument...
            caller.send_signal(signal.SIGKILL)
            caller.wait(10)
        finally:
            if caller.poll() is None:
                caller.kill()
                caller.wait()
        # ...and once its task ends (it cannot deliver its result: the store is gone) nothing holds
        # any: not the caller (dead), not the worker, not its task process.
        wait_until(lambda: not memfds_held(_tree(workers.proc.pid)), timeout=30)
        assert task in _tree(workers.proc.pid)  # the task process lived on, and serves again
        ex = gearnb.Executor(gearnb_address, key=KEY)
        try:
            assert ex.submit(identity, 5).result(timeout=30) == 5
        finally:
            ex.shutdown(wait=False)
    assert dev_shm() - before == set()


def test_kill_9_of_a_task_process_or_a_worker_leaves_no_shared_memory(gearnb_address, tmp_path):
    before = dev_shm()
    big = np.arange(2 * 1024 * 1024, dtype=np.float64)  # 16 MiB, captured

    def task(i, flag_dir, victim):
        import os
        import pathlib
        import signal
        import time

        if i == 1 and not any(pathlib.Path(flag_dir).iterdir()):  # the first attempt only
            pathlib.Path(flag_dir, str(os.getpid())).touch()
            if victim == "task":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(30)  # the test kills this worker meanwhile
        return float(big[i]) + i

    with WorkerProcesses(gearnb_address, processes=2, key=KEY) as workers:
        ex = gearnb.Executor(gearnb_address, key=KEY)
        try:
            for victim in ("task", "worker"):
                flags = tmp_path / victim
                flags.mkdir()
                if victim == "worker":
                    def kill_its_worker():
                        (pid,) = wait_until(lambda: list(flags.iterdir()), timeout=60)
                        task_pid = int(pid.name)
                        assert memfds_held([task_pid])
                        worker_pid = int(open(f"/proc/{task_pid}/stat").read().rsplit(")", 1)[1].split()[1])
                        os.kill(worker_pid, signal.SIGKILL)

                    killer = threading.Thread(target=kill_its_worker)
                    killer.start()
                got = ex.gmap(task, range(4), [str(flags)] * 4, [victim] * 4, chunksize=1, timeout=120)
                if victim == "worker":
                    killer.join(10)
                assert got == [float(i) + i for i in range(4)]
                assert len(list(flags.iterdir())) == 1
                pids = [os.getpid(), *_tree(workers.proc.pid)]
                wait_until(lambda: not memfds_held(pids + _tree(workers.proc.pid)), timeout=30)
        finally:
            ex.shutdown(wait=False)
    assert dev_shm() - before == set()


def test_a_forged_reference_is_refused_before_anything_is_fetched(gearnb_address):
    with WorkerProcesses(gearnb_address, processes=1, key=KEY) as workers:
        ex = gearnb.Executor(gearnb_address, key=KEY)
        try:
            store = ex.calls.store
            fetches = store.fetch_count
            # A real value in this process's store, and a call naming it, signed with another key.
            secret = np.arange(1024 * 1024, dtype=np.float64)
            ref = store.share([memoryview(secret).cast("B")])
            body = envelope.encode_call(envelope.FunctionBlob(identity), [((1,), {})], with_code=True, chunk=False)
            msg = msgpack.unpackb(body, raw=False)
            msg["a"] = cloudpickle.dumps([[[secret], {}]], protocol=5, buffer_callback=lambda b: False)
            msg["af"] = envelope.PICKLED
            msg["zb"] = [ref]
            msg["sa"] = store.address
            forged, _ = Signer(b"f" * 32).sign_call(b"pyexec", [msgpack.packb(msg, use_bin_type=True)])
            with pytest.raises(gearnb.JobException, match="does not match this cluster's key"):
                gearnb.Client(gearnb_address).do("pyexec", forged, timeout=30)
            assert store.fetch_count == fetches
            # The same reference signed with the cluster key is fetched: the refusal was the key's.
            genuine, call = ex.signer.sign_call(b"pyexec", [msgpack.packb(msg, use_bin_type=True)])
            store.expect(call.nonce)
            answer = gearnb.Client(gearnb_address).do("pyexec", genuine, timeout=30)
            result = envelope.decode_result(ex.signer.verify_result(b"pyexec", answer, call),
                                            lambda r: store.take(r, call.nonce))
            assert np.array_equal(result["values"][0], secret) and store.fetch_count == fetches + 1
            store.release([ref[0]])
        finally:
            ex.shutdown(wait=False)
    del workers


def test_a_store_refuses_unsealed_or_mis_sized_values_and_unknown_tokens():
    store = sharing.ValueStore()
    try:
        nonce = os.urandom(16)
        store.expect(nonce)
        link = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        link.connect(store.address)
        # A "result" in a memfd that is not sealed: whoever holds it could still change it.
        loose = os.memfd_create("gearnb-value", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(loose, b"x" * 4096)
        token = os.urandom(16)
        sharing._send(link, sharing.PUT, token, nonce, 4096, fd=loose)
        with pytest.raises(sharing.SharedUnavailable, match="not sealed"):
            store.take([token, 4096], nonce, timeout=10)
        # A sealed one of another size than its reference says.
        sealed = sharing.seal([memoryview(b"y" * 4096)])
        token = os.urandom(16)
        sharing._send(link, sharing.PUT, token, nonce, 4096, fd=sealed)
        with pytest.raises(sharing.SharedUnavailable, match="4096 bytes where its signed reference says 8192"):
            store.take([token, 8192], nonce, timeout=10)
        # A result for a call nobody expects is closed on arrival; a token nobody shared is gone.
        sharing._send(link, sharing.PUT, os.urandom(16), os.urandom(16), 4096, fd=sealed)
        links = sharing.StoreLinks()
        with pytest.raises(sharing.SharedUnavailable, match="no longer holds"):
            links.fetch(store.address, [os.urandom(16), 4096])
        with pytest.raises(sharing.SharedUnavailable, match="malformed"):
            links.fetch(store.address, [b"short", 4096])
        ref = store.share([memoryview(b"z" * 4096)])
        assert bytes(links.fetch(store.address, ref)) == b"z" * 4096
        with pytest.raises(sharing.SharedUnavailable, match="size"):
            links.fetch(store.address, [ref[0], 1234])
        store.release([ref[0]])
        wait_until(lambda: (links.poll(), ref[0] not in links.mapped)[1], timeout=10)
        for fd in (loose, sealed):
            os.close(fd)
        link.close()
        links.close()
        assert not store._delivered and not store._values
    finally:
        store.close()
