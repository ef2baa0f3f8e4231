"""The cells of 04-failures.ipynb: remote exceptions, retries, tasks that crash their process,
tasks that never end, a worker killed in the middle of a map, cancelling, and Ctrl-C."""

from common import code, md

CELLS = [
    md("""
# When things go wrong

Remote exceptions, retries, tasks that crash their process or never end, a worker killed in the
middle of a map, cancelling, and Ctrl-C. This notebook uses an explicit local cluster of two
workers, `gearnb.local(workers=2)`, whose executor has the same `gmap` / `imap` / `submit` as
the module-level functions plus the pids of its worker processes.

Each worker runs its tasks in a *task process* of its own: a task that kills that process
(a segfault, `os._exit`, the OOM killer) fails, the worker starts a fresh task process, and the
worker itself - with its connection to the job server - carries on.
"""),
    code("""
import os
import pathlib
import signal
import tempfile
import threading
import time
import traceback

import gearnb

ex = gearnb.local(workers=2)
scratch = pathlib.Path(tempfile.mkdtemp(prefix="gearnb-failures-"))


def wait_for(condition, timeout=20.0, what="the condition"):
    \"\"\"Poll until condition() is true; give up after timeout seconds.\"\"\"
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)


def pyexec_status():
    \"\"\"What the job server says about gearnb's function, pyexec: queued, running, workers.\"\"\"
    with gearnb.Admin(ex.servers[0]) as admin:
        return next((s for s in admin.status() if s.function == "pyexec"), None)


ex
"""),
    md("""
## A remote exception, with its remote traceback

The exception is raised again here with its own type; the worker's traceback is its
`__cause__`.
"""),
    code("""
def parse_age(text):
    return int(text)


try:
    ex.gmap(parse_age, ["42", "7", "forty"])
except ValueError as exc:
    print("caught:", repr(exc))
    traceback.print_exception(exc)
"""),
    md("""
## Retries

`flaky` fails the first time it sees an item, as a network call might, and works the second time.
It counts its attempts in files, since each attempt may run in another worker process.
"""),
    code("""
def flaky(i, folder):
    import pathlib

    attempts = pathlib.Path(folder, str(i))
    attempt = int(attempts.read_text()) + 1 if attempts.exists() else 1
    attempts.write_text(str(attempt))
    if attempt == 1:
        raise ConnectionError(f"item {i}: attempt {attempt} failed")
    return i * 10


first_try = scratch / "no-retries"
first_try.mkdir()
try:
    ex.gmap(flaky, range(10), [str(first_try)] * 10)
except ConnectionError as exc:
    print("without retries:", exc)
"""),
    code("""
with_retries = scratch / "retries"
with_retries.mkdir()
values = ex.gmap(flaky, range(10), [str(with_retries)] * 10, retries=1)
attempts = {int(p.name): int(p.read_text()) for p in with_retries.iterdir()}
print("values:  ", values)
print("attempts:", [attempts[i] for i in range(10)])
assert values == [i * 10 for i in range(10)]
"""),
    code("""
single = scratch / "submit"
single.mkdir()
ex.submit(flaky, 7, str(single), retries=1).result(timeout=30)  # submit() takes retries= too
"""),
    md("""
## A task that crashes its process

`crashy` segfaults on item 3 (`ctypes.string_at(0)` reads address 0). Its task process dies;
the worker answers that job with `gearnb.WorkerDied`, saying how the process ended, and starts a
fresh task process. gearnb tries such a task three times, each time in a fresh process (a chunk
is split into single items first, so the other items of its chunk are not lost), then the map
raises - once, naming the item. The same happens for `os._exit(1)` or a SIGKILL from the
kernel's OOM killer.
"""),
    code("""
def crashy(i):
    import ctypes

    if i == 3:
        ctypes.string_at(0)  # a segfault
    return i * i


began = time.monotonic()
try:
    ex.gmap(crashy, range(8))
except gearnb.WorkerDied as exc:
    print(f"after {time.monotonic() - began:.1f} s:", exc)
    print(*exc.__notes__)
print(ex.gmap(crashy, [0, 1, 2, 4]))  # the cluster carries on at once
"""),
    md("""
`sys.exit()` inside a task is not a crash: like any exception, it fails that task, and the
worker carries on. (It is raised again here, as `concurrent.futures` does.)
"""),
    code("""
import sys

print(repr(ex.submit(sys.exit, 3).exception(timeout=30)))
"""),
    md("""
## A task that never ends

A map's `timeout=` gives up on it: its queued jobs are taken out of the job server's queue and
its running tasks are stopped where they run (a KeyboardInterrupt in the task; its process is
killed if it does not stop within two seconds). Seconds later no worker runs it any more.
`future.cancel(force=True)` does the same for one call.
"""),
    code("""
def spin(i):
    while True:
        pass


began = time.monotonic()
try:
    ex.gmap(spin, range(4), timeout=3)
except TimeoutError as exc:
    print(f"{exc!r} after {time.monotonic() - began:.1f} s")
wait_for(lambda: pyexec_status().running == 0, what="the spinning tasks stopping")
print(pyexec_status())
print(ex.gmap(abs, range(-6, 0)))  # both workers are free again
"""),
    md("""
## A worker killed in the middle of a map

Forty items of 0.3 s each on two workers. After five results, wait for one worker to start a
new item, then kill the worker process itself with SIGKILL: no clean-up, no goodbye (its task
process goes with it). The job server sees the worker's connection drop and gives its job to
the other worker; the local cluster starts a replacement process. Nothing is lost and nothing
is returned twice.
"""),
    code("""
started = scratch / "started"
started.mkdir()


def slow_identity(i, folder=str(started)):
    import os
    import pathlib
    import time

    pathlib.Path(folder, f"{i}-{os.getppid()}").touch()  # "item i started by worker pid" (its task's parent)
    time.sleep(0.3)
    return i


victim = ex.worker_pids()[0]
print("worker pids:", ex.worker_pids(), "- will kill", victim)
results = []
for value in ex.imap(slow_identity, range(40)):
    results.append(value)
    if len(results) == 5:
        seen = {p.name for p in started.iterdir()}
        wait_for(lambda: any(p.name.endswith(f"-{victim}") and p.name not in seen for p in started.iterdir()),
                 what="the victim starting an item")
        os.kill(victim, signal.SIGKILL)
assert results == list(range(40)), results
print("all 40 results, in order")
"""),
    code("""
by_item = {}
for p in started.iterdir():
    item, pid = p.name.split("-")
    by_item.setdefault(int(item), []).append(int(pid))
rerun = {item: pids for item, pids in by_item.items() if len(pids) > 1}
print("started by the killed worker and run again elsewhere:", rerun)
wait_for(lambda: ex.cluster.restarts >= 1 and len(ex.worker_pids()) == 2, what="the replacement worker")
print("worker pids now:", ex.worker_pids(), "- restarts:", ex.cluster.restarts)
"""),
    md("""
## Cancelling a queued call

While both workers are busy, a third call waits in the job server's queue. `cancel()` takes it
out of the queue (admin `cancel job`), so it never runs. A call that already finished cannot be
cancelled, as with any `concurrent.futures.Future`.
"""),
    code("""
wait_for(lambda: pyexec_status().workers == 2, what="both workers registered")
blockers = [ex.submit(time.sleep, 1.0) for _ in range(2)]
wait_for(lambda: pyexec_status().running == 2, what="both workers busy")
marker = scratch / "cancelled-call-ran"
queued = ex.submit(marker.write_text, "it ran")
print("cancel():", queued.cancel(), "- cancelled():", queued.cancelled())
queued
"""),
    code("""
for f in blockers:
    f.result(timeout=30)
time.sleep(0.3)
print("the cancelled call ran:", marker.exists())
print("cancel() after it finished:", blockers[0].cancel())
assert queued.cancelled() and not marker.exists()
"""),
    md("""
## Ctrl-C

Interrupting a cell (the ■ button, or Ctrl-C in a terminal) raises `KeyboardInterrupt` in the
map, which then cancels its jobs still queued on the job server and stops the running ones, so
no worker goes on with work nobody waits for. Jupyter interrupts a kernel by sending SIGINT to
its whole process group; the local cluster's processes run in sessions of their own, so the
signal reaches only the kernel. Here a timer plays the user: after one second it sends SIGINT to
this kernel's process group, as Jupyter does, and the cell catches the interrupt to go on.
"""),
    code("""
def interrupt_like_jupyter():
    if os.getpgid(0) == os.getpid():  # this kernel leads its process group, as Jupyter starts it
        os.killpg(os.getpgid(0), signal.SIGINT)
    else:  # started some other way: signal the kernel alone
        os.kill(os.getpid(), signal.SIGINT)


workers_before = ex.worker_pids()
timer = threading.Timer(1.0, interrupt_like_jupyter)
timer.start()
began = time.monotonic()
try:
    ex.gmap(time.sleep, [0.2] * 100, chunksize=1)  # 10 s of work on two workers
    print("not interrupted?")
except KeyboardInterrupt:
    print(f"KeyboardInterrupt after {time.monotonic() - began:.1f} s")
finally:
    timer.cancel()
"""),
    code("""
wait_for(lambda: pyexec_status().total == 0, what="nothing of the map left")
print(pyexec_status())
print("same worker processes:", ex.worker_pids() == workers_before)
began = time.monotonic()
print(ex.gmap(abs, [-1, -2, -3]), f"in {time.monotonic() - began:.2f} s")  # the executor is fine afterwards
"""),
    md("""
## Clean up
"""),
    code("""
import shutil

ex.shutdown()
shutil.rmtree(scratch)
"""),
]
