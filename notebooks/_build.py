"""Writes the teaching notebooks (notebooks/*.ipynb) from the cells below.

    python notebooks/_build.py            # rewrite every notebook, outputs cleared
    python notebooks/_build.py 03         # only those whose name contains "03"

This file is the notebooks' source: edit the cells here and rerun it (an edit made in Jupyter
should be carried back here, or the next rebuild undoes it). It keeps the text reviewable as
plain Python and gives the cells stable ids, so a rebuild changes only what changed.
tests/test_notebooks.py runs every notebook in a real kernel and checks that none is committed
with outputs.
"""

from __future__ import annotations

import pathlib
import sys

import nbformat

HERE = pathlib.Path(__file__).resolve().parent


def md(text: str) -> tuple[str, str]:
    return ("markdown", text.strip("\n"))


def code(text: str) -> tuple[str, str]:
    return ("code", text.strip("\n"))


# ---------------------------------------------------------------------------------------------
QUICKSTART = [
    md("""
# gearnb quickstart

`gearnb.map` runs a Python function over your data on Gearman workers and gives back a list,
like the built-in `map`. The first call starts a **local cluster** with no set-up: a gearnb job
server on a free port of 127.0.0.1 and one worker process per CPU, which stop when this kernel
does. (`gearnb.connect("host1:4730,host2:4730", key=...)`, or `GEARMAN_SERVERS` with `GEARNB_KEY`
in the environment, sends the work to existing job servers instead: see `05-scale-out.ipynb`.)

Three cells:
"""),
    code("""
import time

import gearnb
"""),
    md("""
Each of the 200 calls sleeps 20 ms, so the whole map takes a couple of seconds and the progress
panel has something to show: items done, how many are running and queued, the rate and the time
left. The items travel in chunks (`chunksize="auto"`: about four chunks per worker), so the bar
moves a chunk at a time; `chunksize=1` makes every item its own Gearman job.
"""),
    code("""
squares = gearnb.map(lambda x: time.sleep(0.02) or x * x, range(200))
"""),
    code("""
squares[:10], len(squares), sum(squares)
"""),
    md("""
The lambda was pickled with cloudpickle, signed with the cluster's key, sent to the workers as
Gearman jobs, and the results came back in order. The executor behind the module-level calls
shows its job server, queues and workers:
"""),
    code("""
gearnb.default_executor()
"""),
    md("""
## Futures: `submit`, `as_completed`, `await`

`gearnb.submit(f, *args)` runs one call and returns at once with a
`concurrent.futures.Future`; its HTML view shows the Gearman job handle and the state.
"""),
    code("""
def slow_square(x):
    time.sleep(0.5)
    return x * x


future = gearnb.submit(slow_square, 12)
future
"""),
    code("""
future.result(timeout=30), future
"""),
    md("""
`gearnb.as_completed` hands back futures as they finish (with the same progress panel), so
results can be used while the rest still runs:
"""),
    code("""
import random


def nap(i):
    time.sleep(random.uniform(0.05, 0.4))
    return i


futures = [gearnb.submit(nap, i) for i in range(16)]
order = [f.result() for f in gearnb.as_completed(futures, timeout=60)]
print("finished in this order:", order)
"""),
    md("""
The futures are awaitable too, so asyncio code (and a notebook cell: IPython runs top-level
`await`) can wait for them without blocking the event loop:
"""),
    code("""
await gearnb.submit(pow, 2, 100)
"""),
    md("""
## Remote exceptions

An exception inside a task comes back as the same exception type, with the worker's traceback
attached as its cause (the way `concurrent.futures.ProcessPoolExecutor` does it). Here the cell
catches it and prints both, so the notebook goes on; uncaught, Jupyter would show the same chain.
"""),
    code("""
import traceback


def reciprocal(x):
    return 1 / x


try:
    gearnb.map(reciprocal, [4, 2, 0, 1])
except ZeroDivisionError as exc:
    print("caught:", repr(exc))
    print("remote traceback:", exc.__cause__)
"""),
    code("""
try:
    gearnb.submit(int, "forty-two").result(timeout=30)
except ValueError as exc:
    traceback.print_exception(exc)  # the local and the remote traceback, chained
"""),
    md("""
## Clean up

`gearnb.shutdown()` stops the local cluster (it would also stop with the kernel).
"""),
    code("""
gearnb.shutdown()
"""),
]

# ---------------------------------------------------------------------------------------------
CALCULUS = [
    md("""
# Gearman from the ground up: the calculus demo

The teaching demo of gearman-ruby, in a notebook. Everything Gearman has is here:

* a **job server** that queues jobs by function name,
* **workers** that tell the server which functions they can do and take jobs,
* a **client** that submits jobs and hears back through callbacks.

```
client --SUBMIT_JOB("addition", [2, 3])--> job server --JOB_ASSIGN--> worker "addition"
client <--JOB_CREATED(handle)------------- job server
client <--WORK_COMPLETE(handle, 5)-------- job server <--WORK_COMPLETE-- worker
```

Nothing here is Python-specific: the data is msgpack, and at the end a worker written in C
(libgearman's `gearman` command) serves a function that Python calls.
"""),
    code("""
import atexit
import os
import re
import subprocess
import threading
import time

import msgpack

import gearnb
from gearnb.server import Server


def wait_for(condition, timeout=10.0, what="the condition"):
    \"\"\"Poll until condition() is true; give up after timeout seconds.\"\"\"
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.02)
"""),
    md("""
## A job server

A gearnb job server on a thread of this kernel, on a free port (`port=0`). From a shell the same
server is `python -m gearnb server --port 4730`, and gearmand would do just as well.
"""),
    code("""
server = Server("127.0.0.1", 0).start_in_thread()
address = server.address
admin = gearnb.Admin(address)  # the admin text protocol: status, workers, prioritystatus, ...
print("job server:", address, "-", admin.version())
"""),
    md("""
## Four workers, one per operation

Each worker is a `gearnb.Worker` on a thread of its own. It registers one function, whose
argument is a msgpack `[a, b]`, and answers with the msgpack-encoded result.
"""),
    code("""
OPERATIONS = {
    "addition": lambda a, b: a + b,
    "subtraction": lambda a, b: a - b,
    "multiplication": lambda a, b: a * b,
    "division": lambda a, b: a / b,
}
workers, threads = [], []


def start(worker):
    \"\"\"Run worker.work() on a thread (worker.stop() ends it).\"\"\"
    thread = threading.Thread(target=worker.work, name=f"worker {worker.client_id}", daemon=True)
    thread.start()
    workers.append(worker)
    threads.append(thread)


def gearman_function(operation):
    def run(job):  # job.data, job.handle, job.function, job.unique
        a, b = msgpack.unpackb(job.data)
        return msgpack.packb(operation(a, b))
    return run


for name, operation in OPERATIONS.items():
    worker = gearnb.Worker(address, client_id=f"calc-{name}")
    worker.register(name, gearman_function(operation))
    start(worker)


def show_status():
    print(f"{'function':<16}{'queued':>7}{'running':>8}{'workers':>8}")
    for s in admin.status():
        print(f"{s.function:<16}{s.total - s.running:>7}{s.running:>8}{s.workers:>8}")


wait_for(lambda: sum(s.workers for s in admin.status()) >= 4, what="four workers registering")
show_status()
"""),
    md("""
## The client: one Task per operation

The client finds the operations in a line of text and submits one `Task` per operation to the
function that does it. A `TaskSet` submits them all at once; their callbacks run inside
`taskset.wait()`, on this thread:

* `on_created(handle)`: the server queued the job and named it with a **job handle**,
* `on_complete(data)`: the worker's answer,
* `on_exception(text)`: the worker raised (here, `1/0`): its traceback, as text.
"""),
    code("""
FUNCTION_FOR = {"+": "addition", "-": "subtraction", "*": "multiplication", "/": "division"}
OPERATION = re.compile(r"(-?\\d+(?:\\.\\d+)?)\\s*([-+*/])\\s*(-?\\d+(?:\\.\\d+)?)")


def number(text):
    return float(text) if "." in text else int(text)


client = gearnb.Client(address)
results = {}


def add_callbacks(task, expression):
    @task.on_created
    def created(handle):
        print(f"{expression:>6}: {task.function.decode():<14} job {handle.decode()}")

    @task.on_complete
    def complete(data):
        results[expression] = msgpack.unpackb(data)
        print(f"{expression:>6} = {results[expression]}")

    @task.on_exception
    def exception(text):
        results[expression] = text.strip().splitlines()[-1]
        print(f"{expression:>6} raised {results[expression]}")


taskset = gearnb.TaskSet(client)
for a, op, b in OPERATION.findall("2+3 8*7 9/3 10-4 1/0"):
    task = gearnb.Task(FUNCTION_FOR[op], msgpack.packb([number(a), number(b)]))
    add_callbacks(task, f"{a}{op}{b}")
    taskset.add(task)  # submitted now; the callbacks run in wait()
assert taskset.wait(timeout=30), "the tasks did not finish"
results
"""),
    md("""
`client.do()` is the one-call form: submit, wait, return the answer (or raise
`gearnb.JobException` with the worker's traceback).
"""),
    code("""
msgpack.unpackb(client.do("multiplication", msgpack.packb([6, 7]), timeout=10))
"""),
    md("""
## Watching jobs run

The calculus jobs are over in a millisecond. A slow function shows what the job server knows
while a job runs. `countdown` takes N tenths of a second and reports how far it got with
`job.send_status(n, d)` (Gearman's WORK_STATUS).
"""),
    code("""
def countdown(job):
    steps = int(job.data)
    for step in range(steps):
        job.send_status(step, steps)
        time.sleep(0.1)
    job.send_status(steps, steps)
    return f"counted to {steps}"


slow = gearnb.Worker(address, client_id="slow-1")
slow.register("countdown", countdown)
start(slow)
wait_for(lambda: any(s.function == "countdown" and s.workers for s in admin.status()))
"""),
    md("""
A foreground task hears the status as it goes (`on_status`):
"""),
    code("""
task = gearnb.Task("countdown", b"5")
task.on_status(lambda n, d: print(f"status {n}/{d}")).on_complete(lambda data: print("complete:", data))
client.submit(task)
assert task.wait(timeout=10)
"""),
    md("""
A **background** job: `do_background` returns the job handle as soon as the job is queued, and
the client can go away. Anyone can ask the server about the handle with `client.status(handle)`
(GET_STATUS). While it runs, the admin protocol shows it in `status` (queued / running /
workers per function), `workers` (each connection, its client id and functions) and `show jobs`.
"""),
    code("""
handle = client.do_background("countdown", b"20")  # two seconds of work
print("background job:", handle.decode())
wait_for(lambda: client.status(handle).running, what="the countdown starting")
show_status()
print()
for w in admin.workers():
    if w.functions:
        print(f"worker fd={w.fd:<3} {w.ip:<10} {w.client_id:<20} {' '.join(w.functions)}")
print()
print("show jobs:", admin.show_jobs())
"""),
    code("""
for _ in range(20):  # at most ~6 s
    status = client.status(handle)
    print(status)
    if not status.known:  # finished: the server has forgotten the handle
        break
    time.sleep(0.3)
"""),
    md("""
## Priorities

Jobs wait in three queues per function: `high`, `normal` and `low`; a worker always gets the
oldest job of the highest priority. With no `record` worker yet, the jobs below wait, and the
admin command `prioritystatus` counts them per queue. They are submitted low first, to show
that the order in which they run is the priority's, not the submission's.
"""),
    code("""
for i in range(2):
    for priority in ("low", "normal", "high"):
        client.do_background("record", f"{priority} #{i}", priority=priority)
[s for s in admin.priority_status() if s.function == "record"]
"""),
    code("""
ran = []
recorder = gearnb.Worker(address, client_id="recorder")
recorder.register("record", lambda job: ran.append(job.data.decode()))
start(recorder)
wait_for(lambda: len(ran) == 6, what="the six record jobs")
ran
"""),
    md("""
## A worker in another language

libgearman's `gearman` command is a worker when given `-w`: it runs a command for each job,
with the job's data on stdin, and answers with what the command prints. Here `tr a-z A-Z`
serves the function `shout`, and Python calls it like any other. (The same works the other way:
the `gearman` client can call the Python `multiplication` worker with msgpack bytes.)
"""),
    code("""
host, port = address.split(":")
shout = subprocess.Popen(["gearman", "-w", "-h", host, "-p", port, "-f", "shout", "--", "tr", "a-z", "A-Z"])
atexit.register(shout.kill)  # should the notebook stop half-way
wait_for(lambda: any(s.function == "shout" and s.workers for s in admin.status()), what="the gearman worker")
client.do("shout", b"hello from python", timeout=10)
"""),
    code("""
reply = subprocess.run(["gearman", "-h", host, "-p", port, "-f", "multiplication"],
                       input=msgpack.packb([7, 6]), capture_output=True, timeout=10, check=True)
msgpack.unpackb(reply.stdout)
"""),
    md("""
`gearnb.call` is the short form for a plain Gearman function with msgpack data. It goes through
the module-level executor, so point that at this server first. (The executor wants a cluster
key, used only to sign Python callables; plain functions never see it, so any key will do.)
"""),
    code("""
gearnb.connect(address, key=os.urandom(32))
gearnb.call("addition", [2, 3]), gearnb.call("division", [9, 3])
"""),
    md("""
## Clean up

Stop the workers (each finishes its current job first), the `gearman` worker, the client and
the server.
"""),
    code("""
gearnb.shutdown()
shout.terminate()
shout.wait(10)
for worker in workers:
    worker.stop()
for thread in threads:
    thread.join(10)
client.close()
admin.close()
server.stop_in_thread()
print("stopped", len(workers), "workers; threads alive:", sum(t.is_alive() for t in threads))
"""),
]

# ---------------------------------------------------------------------------------------------
SWEEP = [
    md("""
# A parameter sweep

A grid of 100 simulations, farmed out with `gearnb.map`: the steady-state amplitude of a driven,
damped oscillator

$$\\ddot x + 2\\zeta\\dot x + x = \\cos(\\omega t)$$

over 20 driving frequencies $\\omega$ and 5 damping ratios $\\zeta$. Each task integrates the
equation step by step in plain Python (30,000 steps) and calls
`gearnb.report(done, total)` as it goes; the progress panel shows a bar for each task that
reports, next to the overall numbers.

The theory says the amplitude is $1/\\sqrt{(1-\\omega^2)^2 + (2\\zeta\\omega)^2}$, so the plot
at the end can check the sweep.
"""),
    code("""
import itertools
import math

import matplotlib.pyplot as plt
import numpy as np

import gearnb


def amplitude(frequency, damping, t_end=150.0, dt=0.005):
    \"\"\"Largest |x| over the last quarter of the run, starting from rest.\"\"\"
    steps = int(t_end / dt)
    tail = steps * 3 // 4
    x = v = peak = 0.0
    for n in range(steps):
        if n % (steps // 10) == 0:
            gearnb.report(n, steps)  # WORK_STATUS to the caller; does nothing outside a worker
        a = math.cos(frequency * n * dt) - 2 * damping * v - x
        v += a * dt  # semi-implicit Euler: stable for oscillators
        x += v * dt
        if n >= tail:
            peak = max(peak, abs(x))
    return peak


amplitude(1.0, 0.5)  # runs here too: report() is a no-op outside a worker
"""),
    md("""
The grid, flattened into two lists of parameters (`map` zips its iterables, like the built-in):
"""),
    code("""
frequencies = np.linspace(0.1, 2.0, 20)
dampings = [0.05, 0.1, 0.2, 0.35, 0.5]
grid = list(itertools.product(dampings, frequencies))
zetas = [float(z) for z, _ in grid]
omegas = [float(w) for _, w in grid]
len(grid)
"""),
    md("""
`chunksize=1` makes each simulation its own Gearman job, so every one reports its own progress.
"""),
    code("""
peaks = gearnb.map(amplitude, omegas, zetas, chunksize=1)
"""),
    code("""
result = np.array(peaks).reshape(len(dampings), len(frequencies))
theory = 1 / np.sqrt((1 - frequencies**2) ** 2 + (2 * np.array(dampings)[:, None] * frequencies) ** 2)
print("largest relative error against theory:", float(np.max(np.abs(result - theory) / theory)))
"""),
    code("""
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
image = left.imshow(np.log10(result), aspect="auto", origin="lower", cmap="viridis",
                    extent=[frequencies[0], frequencies[-1], -0.5, len(dampings) - 0.5])
left.set_yticks(range(len(dampings)), [str(z) for z in dampings])
left.set_xlabel("driving frequency ω")
left.set_ylabel("damping ζ")
left.set_title("log10 amplitude")
fig.colorbar(image, ax=left)
for row, zeta in zip(result, dampings):
    (line,) = right.plot(frequencies, row, "o", ms=4, label=f"ζ = {zeta}")
    fine = np.linspace(frequencies[0], frequencies[-1], 300)
    right.plot(fine, 1 / np.sqrt((1 - fine**2) ** 2 + (2 * zeta * fine) ** 2), "-", color=line.get_color(), lw=1)
right.set_yscale("log")
right.set_xlabel("driving frequency ω")
right.set_ylabel("amplitude")
right.set_title("sweep (dots) against theory (lines)")
right.legend()
fig.tight_layout()
"""),
    md("""
## Clean up
"""),
    code("""
gearnb.shutdown()
"""),
]

# ---------------------------------------------------------------------------------------------
FAILURES = [
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

# ---------------------------------------------------------------------------------------------
SCALE_OUT = [
    md("""
# Scaling out: two job servers, failover

A real deployment has several Gearman job servers and workers on many machines. Here it all
runs on 127.0.0.1, as separate processes:

* two **gearmand** job servers, A and B (the Gearman project's own job server, in C),
* `python -m gearnb worker --servers A,B --processes 2`: two worker processes, each connected to
  both servers, with the cluster key in `GEARNB_KEY` (workers run only calls signed with it),
* this notebook as the client: `gearnb.connect("A,B", key=...)`.

The client spreads jobs over both servers. When one server dies in the middle of a map, the
client sends its unfinished jobs to the other, and the map completes.
"""),
    code("""
import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import gearnb

GEARMAND = shutil.which("gearmand") or "/usr/sbin/gearmand"
logs = tempfile.mkdtemp(prefix="gearnb-scale-out-")
processes = []


def stop_all():
    \"\"\"Stop what this notebook started, in order: workers first, then the job servers.\"\"\"
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


atexit.register(stop_all)  # should the notebook stop half-way


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout=20.0, what="the condition"):
    \"\"\"Poll until condition() is true; give up after timeout seconds.\"\"\"
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.05)


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
"""),
    md("""
## Two gearmand job servers
"""),
    code("""
def start_gearmand(name, port):
    proc = subprocess.Popen([GEARMAND, "--listen", "127.0.0.1", "--port", str(port), "--threads", "0",
                             "--log-file", os.path.join(logs, f"gearmand-{name}.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes.append(proc)
    wait_for(lambda: listening(port), what=f"gearmand {name} listening")
    return proc


ports = {"A": free_port(), "B": free_port()}
gearmand = {name: start_gearmand(name, port) for name, port in ports.items()}
A, B = (f"127.0.0.1:{ports[name]}" for name in "AB")
for name, address in (("A", A), ("B", B)):
    with gearnb.Admin(address) as admin:
        print(f"gearmand {name}: {address}, version {admin.version()}, pid {admin.getpid()}")
"""),
    md("""
## Workers on both servers

The key is 32 random bytes; the workers get it in hex through `GEARNB_KEY`, as they would on
another machine. Their log goes to a file.
"""),
    code("""
key = secrets.token_bytes(32)
worker_log = open(os.path.join(logs, "workers.log"), "wb")
workers = subprocess.Popen([sys.executable, "-m", "gearnb", "worker", "--servers", f"{A},{B}", "--processes", "2"],
                           env={**os.environ, "GEARNB_KEY": key.hex()}, stdout=worker_log, stderr=subprocess.STDOUT)
processes.insert(0, workers)  # stopped first


def pyexec_workers(address):
    with gearnb.Admin(address) as admin:
        return sum(s.workers for s in admin.status() if s.function == "pyexec")


wait_for(lambda: pyexec_workers(A) == 2 and pyexec_workers(B) == 2, what="two workers on each server")
print("pyexec workers on A:", pyexec_workers(A), "on B:", pyexec_workers(B))
"""),
    md("""
## Connect and map
"""),
    code("""
ex = gearnb.connect(f"{A},{B}", key=key)


def where(i):
    import os
    import time

    time.sleep(0.05)
    return i, os.getpid()


out = gearnb.map(where, range(40), chunksize=1)
print("worker processes used:", sorted({pid for _, pid in out}))
for name, address in (("A", A), ("B", B)):
    with gearnb.Admin(address) as admin:
        print(name, admin.status())
"""),
    md("""
## Stop a job server in the middle of a map

`imap_unordered` hands back results as they arrive, so the loop can stop gearmand A after the
tenth, while both servers still hold queued jobs. The jobs A held (queued, or running on a
worker that can no longer report to A) are lost with it; the client notices the closed
connection, logs a warning and submits those jobs again to B. The workers keep serving B and
try to reconnect to A now and then.
"""),
    code("""
def slow_where(i):
    import os
    import time

    time.sleep(0.1)
    return i, os.getpid()


results = []
for value in gearnb.imap_unordered(slow_where, range(80)):
    results.append(value)
    if len(results) == 10:
        gearmand["A"].terminate()
        gearmand["A"].wait(10)
        print(f"gearmand A stopped after {len(results)} results")
assert sorted(i for i, _ in results) == list(range(80))
print("all", len(results), "results, each once")
"""),
    code("""
print("A listening:", listening(ports["A"]))
with gearnb.Admin(B) as admin:
    print("B:", admin.status())
gearnb.map(abs, [-1, -2, -3])  # and new work goes to B
"""),
    md("""
## Clean up

The worker launcher stops its processes on SIGTERM (each finishes its current job first).
"""),
    code("""
gearnb.shutdown()
stop_all()
worker_log.close()
print("exit codes:", [p.returncode for p in processes])
print("the end of the workers' log:")
with open(os.path.join(logs, "workers.log")) as f:
    for line in f.readlines()[-6:]:
        print("   ", line.rstrip())
shutil.rmtree(logs)
"""),
]

NOTEBOOKS = {
    "01-quickstart.ipynb": QUICKSTART,
    "02-calculus.ipynb": CALCULUS,
    "03-parameter-sweep.ipynb": SWEEP,
    "04-failures.ipynb": FAILURES,
    "05-scale-out.ipynb": SCALE_OUT,
}


def build(cells: list[tuple[str, str]], prefix: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    }
    for index, (kind, text) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(text, id=f"{prefix}-{index:02d}"))
    nbformat.validate(nb)
    return nb


def main(argv: list[str]) -> None:
    for name, cells in NOTEBOOKS.items():
        if argv and not any(a in name for a in argv):
            continue
        nbformat.write(build(cells, name[:2]), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main(sys.argv[1:])
