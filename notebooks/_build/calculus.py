"""The cells of 02-calculus.ipynb: Gearman from the ground up, with the job server, workers
and client of gearman-ruby's calculus demo and a worker written in C, each step shown as it
happens: packet traces drawn as sequence diagrams, and a live picture of the job server."""

from common import code, md

CELLS = [
    md("""
# Gearman from the ground up: the calculus demo

The teaching demo of gearman-ruby, in a notebook, with pictures of what happens. Gearman has
three roles:

* a **client** submits a job: a function name (`"addition"`) and bytes of data;
* the **job server** keeps a queue per function name (three, in fact: high, normal and low
  priority) and knows which workers can do what;
* a **worker** tells the server which functions it can do and **asks** for jobs.

The server never pushes a job to a worker. Workers *pull*: a worker asks for a job, and when
there is none it says it goes to sleep; when a job arrives, the server only wakes it up (a
one-word packet, NOOP), and the worker asks again. The sections below record the packets
the job server exchanges and draw them as sequence diagrams, and a live picture shows the
queues and workers while jobs run.

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
from IPython.display import display

import gearnb
import gearnb.visual
from gearnb.server import Server


def wait_for(condition, timeout=10.0, what="the condition"):
    \"\"\"Poll until condition() is true; give up after timeout seconds.\"\"\"
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.02)


def asleep(function):
    \"\"\"For Trace.wait_for: a worker that said CAN_DO(function) has said PRE_SLEEP since.\"\"\"
    def check(events):
        workers = {e.conn for e in events if e.name == "CAN_DO" and e.arg("function") == function}
        return any(e.name == "PRE_SLEEP" and e.conn in workers for e in events)
    return check
"""),
    md("""
## The job server

A gearnb job server on a thread of this kernel, on a free port (`port=0`). From a shell the
same server is `python -m gearnb server --port 4730`, and gearmand would do just as well for
everything but the packet traces, which the gearnb server records for us.
"""),
    code("""
server = Server("127.0.0.1", 0).start_in_thread()
address = server.address
admin = gearnb.Admin(address)  # the admin text protocol: status, workers, prioritystatus, ...
client = gearnb.Client(address)
print("job server:", address, "-", admin.version())
"""),
    md("""
## One job, packet by packet

A worker for `addition` starts, on a thread of its own: a `gearnb.Worker` with one function,
whose data is a msgpack `[a, b]`. Half-way it reports its progress (`job.send_status`, the
packet WORK_STATUS). Then the client adds 2 and 3 with `client.do`, which submits the job and
waits for the answer.

`gearnb.trace(server)` records every packet the job server exchanges inside the `with` block;
the trace draws itself as a sequence diagram: a lane per connection, time flowing down, an
arrow per packet with its name and key arguments.
"""),
    code("""
OPERATIONS = {
    "addition": lambda a, b: a + b,
    "subtraction": lambda a, b: a - b,
    "multiplication": lambda a, b: a * b,
    "division": lambda a, b: a / b,
}
workers, threads = [], []


def calculate(operation):
    def run(job):  # job.data, job.handle, job.function, job.unique
        a, b = msgpack.unpackb(job.data)
        job.send_status(1, 2)  # WORK_STATUS: half-way there
        time.sleep(0.05)       # the hard part
        return msgpack.packb(operation(a, b))
    return run


def start(worker):
    \"\"\"Run worker.work() on a thread (worker.stop() ends it).\"\"\"
    thread = threading.Thread(target=worker.work, name=f"worker {worker.client_id}", daemon=True)
    thread.start()
    workers.append(worker)
    threads.append(thread)
    return worker


def start_calculus_worker(name):
    worker = gearnb.Worker(address, client_id=f"calc-{name}")
    worker.register(name, calculate(OPERATIONS[name]))
    return start(worker)


with gearnb.trace(server) as t:
    start_calculus_worker("addition")
    assert t.wait_for(asleep("addition")), "the worker did not go to sleep"
    answer = msgpack.unpackb(client.do("addition", msgpack.packb([2, 3]), timeout=10))
print("2 + 3 =", answer)
t
"""),
    md("""
Read it from the top:

1. **The worker says what it can do**: SET_CLIENT_ID names it, CAN_DO `addition` registers the
   function (RESET_ABILITIES first clears anything left from before).
2. **It asks for work at once**: GRAB_JOB_UNIQ. The queue is empty, so the server answers
   NO_JOB, and the worker says PRE_SLEEP: "wake me when there is something". The dotted line
   is the worker asleep; it is not polling.
3. **The client submits**: SUBMIT_JOB with the function name and 3 bytes of msgpack; the
   server queues the job and answers JOB_CREATED with the **job handle** that names it from
   now on. (OPTION_REQ `exceptions` asked the server to pass on the worker's exceptions.)
4. **The server wakes the worker**: NOOP. It does not send the job.
5. **The worker pulls the job**: GRAB_JOB_UNIQ again, and this time the answer is
   JOB_ASSIGN_UNIQ with the handle, the function, the unique id and the data. The green bar
   on the worker's lane is the job running.
6. **Progress and result go through the server**: WORK_STATUS 1/2, then WORK_COMPLETE with
   the answer; the server passes both on to the client that waits for this handle.
7. **The worker asks again**, gets NO_JOB, and goes back to sleep with PRE_SLEEP.

Hover over an arrow for its full arguments and size. The same diagram as text, for a
terminal, is `print(t)`; `t.sequence(lane)` lists one lane's packets (`<` marks the ones the
server sent it):
"""),
    code("""
worker_packets = t.sequence(t.lane("calc-addition"))
print(" ".join(worker_packets))
# The pull model, in order (the trace may hold more: the other workers, WORK_STATUS updates):
steps = iter(worker_packets)
pull_model = ["CAN_DO", "GRAB_JOB_UNIQ", "<NO_JOB", "PRE_SLEEP", "<NOOP", "GRAB_JOB_UNIQ", "<JOB_ASSIGN_UNIQ",
              "WORK_STATUS", "WORK_COMPLETE", "PRE_SLEEP"]
assert all(step in steps for step in pull_model), worker_packets
"""),
    md("""
## More workers, and a client with callbacks

Three more workers, one per operation. Before they get any work, the job server's picture:
its functions (with a row of boxes per priority queue, one box per waiting job) and its
workers, asleep.
"""),
    code("""
for name in ("subtraction", "multiplication", "division"):
    start_calculus_worker(name)
wait_for(lambda: sum(s.workers for s in admin.status()) >= 4, what="four workers registering")
wait_for(lambda: sum(w.sleeping is True for w in gearnb.visual.cluster_snapshot(server).workers) >= 4,
         what="the workers going to sleep")
gearnb.visual.cluster_snapshot(server)
"""),
    md("""
The client finds the operations in a line of text and submits one `Task` per operation to the
function that does it. A `TaskSet` submits them all at once; their callbacks run inside
`taskset.wait()`, on this thread:

* `on_created(handle)`: the server queued the job and named it with a job handle,
* `on_complete(data)`: the worker's answer,
* `on_exception(text)`: the worker raised (here, `1/0`): its traceback, as text.

The trace shows the five jobs going out to four workers, each woken by its own NOOP, and
the division by zero coming back as WORK_EXCEPTION (red). The workers that had nothing to
do during the trace get no lane.
"""),
    code("""
FUNCTION_FOR = {"+": "addition", "-": "subtraction", "*": "multiplication", "/": "division"}
OPERATION = re.compile(r"(-?\\d+(?:\\.\\d+)?)\\s*([-+*/])\\s*(-?\\d+(?:\\.\\d+)?)")


def number(text):
    return float(text) if "." in text else int(text)


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


with gearnb.trace(server) as calculus_trace:
    taskset = gearnb.TaskSet(client)
    for a, op, b in OPERATION.findall("2+3 8*7 9/3 10-4 1/0"):
        task = gearnb.Task(FUNCTION_FOR[op], msgpack.packb([number(a), number(b)]))
        add_callbacks(task, f"{a}{op}{b}")
        taskset.add(task)  # submitted now; the callbacks run in wait()
    assert taskset.wait(timeout=30), "the tasks did not finish"
assert results["8*7"] == 56 and "ZeroDivisionError" in results["1/0"], results
calculus_trace
"""),
    md("""
## The live picture

`gearnb.visual.cluster_view(server)` is the job server's picture again, redrawn every quarter
of a second while the cells below run: the queues, what each worker is doing, the running jobs
with their progress (WORK_STATUS), and at the bottom the jobs it saw start and finish, in
order. (It reads a server in this kernel directly; given a `"host:port"` it polls any job
server, gearmand included, through the admin protocol.) The cells below show the same live
picture again where it matters.

A slow function makes the picture worth watching: `countdown` takes N tenths of a second and
reports how far it got after each one.
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

view = gearnb.visual.cluster_view(server, interval=0.25)
view
"""),
    md("""
A foreground task hears the progress as it goes (`on_status`), while the picture shows it on
the server's side:
"""),
    code("""
display(view)
task = gearnb.Task("countdown", b"10")
task.on_status(lambda n, d: print(f"status {n}/{d}", end="  ")).on_complete(lambda data: print("\\ncomplete:", data))
client.submit(task)
assert task.wait(timeout=10)
"""),
    md("""
## Background jobs and their progress

A **background** job: `do_background` returns the job handle as soon as the job is queued,
and the client can go away; nobody waits for the result. The worker's WORK_STATUS packets go
to the server, which keeps the latest numbers: anyone holding the handle can ask for them
with `client.status(handle)` (the packet GET_STATUS). The trace below shows a short one: the
worker's status reports end at the server, and a GET_STATUS half-way gets them back.
"""),
    code("""
def reports(count):
    \"\"\"For Trace.wait_for: the server has received this many WORK_STATUS packets.\"\"\"
    return lambda events: sum(e.name == "WORK_STATUS" for e in events) >= count


with gearnb.trace(server) as background_trace:
    handle = client.do_background("countdown", b"4")  # SUBMIT_JOB_BG, four tenths of a second
    assert background_trace.wait_for(reports(3))
    print("half-way:", client.status(handle))  # GET_STATUS
    assert background_trace.wait_for(lambda events: any(e.name == "WORK_COMPLETE" for e in events))
    print("done:    ", client.status(handle), "(known=False: the server has forgotten the handle)")
background_trace
"""),
    md("""
A longer one, two seconds of work, watched three ways: the live picture (its progress bar),
GET_STATUS from this cell, and the admin protocol. `status` counts the jobs of each function
and how many run; `show jobs` lists every job the server holds. Its last column (JOB_QUEUED
in gearmand's source) is 1 for every *background* job, running or not: `show jobs` tells
background from foreground, and `status` and GET_STATUS tell what runs. They agree: the one
job listed is the one `status` counts as running.
"""),
    code("""
display(view)
handle = client.do_background("countdown", b"20")
print("background job:", handle.decode())
wait_for(lambda: client.status(handle).running, what="the countdown starting")
countdown_status = next(s for s in admin.status() if s.function == "countdown")
print(f"status:    countdown total {countdown_status.total}, running {countdown_status.running}, "
      f"workers {countdown_status.workers}")
for job in admin.show_jobs():
    print(f"show jobs: {job.handle}  retries {job.retries}  background {job.background}  "
          f"(GET_STATUS: running {client.status(job.handle.encode()).running})")
assert countdown_status.running == 1 and [j.handle.encode() for j in admin.show_jobs()] == [handle]
for _ in range(40):  # at most ~8 s
    status = client.status(handle)
    print(status)
    if not status.known:  # finished: the server has forgotten the handle
        break
    time.sleep(0.2)
"""),
    md("""
## Priorities

Jobs wait in three queues per function, `high`, `normal` and `low`, and a worker always gets
the oldest job of the highest priority. With no worker for `record` yet, six jobs wait; they
are submitted low first, to show that the order in which they run is the priority's, not the
submission's. The admin command `prioritystatus` counts them per queue, and the picture shows
each queue's jobs as boxes (hover for the handle).
"""),
    code("""
for i in range(2):
    for priority in ("low", "normal", "high"):
        client.do_background("record", f"{priority} #{i}", priority=priority)
print([s for s in admin.priority_status() if s.function == "record"])
gearnb.visual.cluster_snapshot(server)
"""),
    code("""
ran = []
recorder = gearnb.Worker(address, client_id="recorder")
recorder.register("record", lambda job: ran.append(job.data.decode()))
start(recorder)
wait_for(lambda: len(ran) == 6, what="the six record jobs")
assert [r.split()[0] for r in ran] == ["high", "high", "normal", "normal", "low", "low"], ran
ran
"""),
    md("""
A high-priority job also **overtakes** jobs that were queued before it. One worker for `step`
takes 0.3 s per job (the first one waits for a go from this cell, so that the moment can be
caught); four normal jobs are submitted (the first starts, three wait), then one high job.
Watch the live picture: the high job's box appears in the high row, and it is the next to
run; the line "started, in order" keeps the order.
"""),
    code("""
go = threading.Event()


def step(job):
    go.wait(10)
    time.sleep(0.3)
    return job.data


stepper = gearnb.Worker(address, client_id="stepper")
stepper.register("step", step)
start(stepper)
wait_for(lambda: any(s.function == "step" and s.workers for s in admin.status()))

display(view)
normal = [client.do_background("step", f"normal #{i}") for i in range(4)]
wait_for(lambda: client.status(normal[0]).running, what="the first step job starting")
high = client.do_background("step", "high", priority="high")
queued = gearnb.visual.cluster_snapshot(server)  # a still picture of this moment
assert queued.function("step").queued == (1, 3, 0), queued.function("step")
time.sleep(1.0)  # a moment for the live picture to show it too
go.set()
wait_for(lambda: all(not client.status(h).known for h in [*normal, high]), timeout=15, what="the step jobs")
started = [job.handle for job in view.started if job.function == "step"]
print("started, in order:", " ".join(started))
queued
"""),
    md("""
The still picture above is the moment the high job arrived: one normal job running, three
waiting, the high one at the head of its own queue. It ran second.

## A worker in another language

libgearman's `gearman` command is a worker when given `-w`: it runs a command for each job,
with the job's data on stdin, and answers with what the command prints. Here `tr a-z A-Z`
serves the function `shout`, and Python calls it like any other. The other way round, the
`gearman` command as a *client* calls a Python worker for `reverse`.

In the trace the C programs speak the same protocol with their own choices: the C worker asks
with GRAB_JOB_ALL (the server answers JOB_ASSIGN_UNIQ, as gearmand does for a job without a
reducer), and the C client gives its SUBMIT_JOB a unique id of its own (a UUID).
"""),
    code("""
backwards = gearnb.Worker(address, client_id="py-reverse")
backwards.register("reverse", lambda job: job.data[::-1])
start(backwards)
wait_for(lambda: any(s.function == "reverse" and s.workers for s in admin.status()))

host, port = address.split(":")
with gearnb.trace(server) as language_trace:
    shout = subprocess.Popen(["gearman", "-w", "-h", host, "-p", port, "-f", "shout", "--", "tr", "a-z", "A-Z"])
    atexit.register(shout.kill)  # should the notebook stop half-way
    assert language_trace.wait_for(asleep("shout")), "the gearman worker did not register"
    print("C worker, Python client:", client.do("shout", b"hello from python", timeout=10))
    reply = subprocess.run(["gearman", "-h", host, "-p", port, "-f", "reverse", "hello from C"],
                           capture_output=True, timeout=10, check=True)
    print("Python worker, C client:", reply.stdout)
assert reply.stdout == b"C morf olleh"
language_trace
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

Stop the live picture (its last drawing stays), the workers (each finishes its current job
first), the `gearman` worker, the client and the server.
"""),
    code("""
view.stop()
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
