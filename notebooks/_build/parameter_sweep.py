"""The cells of 03-parameter-sweep.ipynb: a grid of simulations over gearnb.map, with
per-task progress bars and a plot checked against the theory."""

from common import code, md

CELLS = [
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
The first call starts the local cluster - a gearnb job server and one worker process per CPU -
and the panel says so while it starts. Once the sweep has run for a second, the panel also
draws its **task stream**: which worker ran each simulation, from when to when.
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
## Where the sweep ran

`gearnb.last_task_stream()` is the task stream of the latest map, from the workers' own
timings: each result says when its task started and ended (on the worker's clock) and which
worker process ran it (host and pid of the worker, and of the task process it runs tasks in).
A lane per worker, a bar per simulation (red for a task that failed, marked for a retry).
Each simulation integrates the same number of steps, so the bars differ only by what else the
machine was doing; the gaps between them are the trips from a worker to the job server and
back for its next job. Hover over a bar for its item, worker, task process and duration.
"""),
    code("""
stream = gearnb.last_task_stream()
assert len(stream) == len(grid) and all(r.ok and r.start <= r.end for r in stream.records)
print(stream.text())
stream
"""),
    md("""
The same as a matplotlib figure, to keep or to combine with other plots (`stream.plot(ax)`
draws into axes of your own):
"""),
    code("""
stream.plot()
"""),
    md("""
## Clean up
"""),
    code("""
gearnb.shutdown()
"""),
]
