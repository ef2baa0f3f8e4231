"""The cells of 04-failures.ipynb: remote exceptions, retries, a worker killed in the middle
of a map, cancelling a queued call, and Ctrl-C."""

from common import code, md

CELLS = [
    md("""
# When things go wrong

Remote exceptions, retries, a worker killed in the middle of a map, cancelling a queued call,
and Ctrl-C. This notebook uses an explicit local cluster of two workers, `gearnb.local(workers=2)`,
whose executor has the same `gmap` / `imap` / `submit` as the module-level functions plus the
pids of its worker processes.
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
## A worker killed in the middle of a map

Forty items of 0.3 s each on two workers. After five results, wait for one worker to start a
new item, then kill it with SIGKILL: no clean-up, no goodbye. The job server sees the worker's
connection drop and gives its job to the other worker; the local cluster starts a replacement
process. Nothing is lost and nothing is returned twice.
"""),
    code("""
started = scratch / "started"
started.mkdir()


def slow_identity(i, folder=str(started)):
    import os
    import pathlib
    import time

    pathlib.Path(folder, f"{i}-{os.getpid()}").touch()  # "item i started in process pid"
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
map, which then cancels its jobs still queued on the job server, so the workers do not go on
with work nobody waits for. Here a timer plays the user and interrupts after one second, and
the cell catches the interrupt to go on.
"""),
    code("""
main = threading.main_thread().ident
timer = threading.Timer(1.0, signal.pthread_kill, args=(main, signal.SIGINT))
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
wait_for(lambda: pyexec_status().total == 0, what="the queue emptying")  # the running items finish
print(pyexec_status())
ex.gmap(abs, [-1, -2, -3])  # the executor is fine afterwards
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
