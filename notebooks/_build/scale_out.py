"""The cells of 05-scale-out.ipynb: two gearmand job servers, pyexec workers on both, and
failover in the middle of a map."""

from common import code, md

CELLS = [
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
