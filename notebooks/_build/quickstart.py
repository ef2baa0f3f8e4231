"""The cells of 01-quickstart.ipynb: gearnb.map on a local cluster, the progress panel,
futures (submit, as_completed, await) and remote exceptions."""

from common import code, md

CELLS = [
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
