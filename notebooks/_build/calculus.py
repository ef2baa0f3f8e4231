"""The cells of 02-calculus.ipynb: Gearman from the ground up, with the job server, workers
and client of gearman-ruby's calculus demo, and a worker written in C."""

from common import code, md

CELLS = [
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
