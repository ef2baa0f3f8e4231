"""The live progress panel in a real Jupyter, on ipykernel 6 and ipykernel 7.

Two layers, both against real processes (no mocks):

* kernel level - a real kernel started through jupyter_client; the widget comm messages it
  sends while ``gearnb.map`` runs are read off IOPub: the panel opens in the running cell,
  its bar moves *during* the cell (not in one burst at the end) and ends full and green,
  or red when a task fails;
* browser level - Jupyter Notebook 7 on a free loopback port and Debian's Chromium driven by
  Playwright: notebooks/01-quickstart.ipynb is opened, Run All Cells is clicked, and the
  rendered panel must be there (no "Loading widget..." / "Error displaying widget") and must
  end at N/N done with a full success bar; a generated notebook with a slower map checks that
  the bar is seen at several partial widths while its cell runs, and a red bar for a failing
  map. Screenshots are kept in tests/artifacts/ (git-ignored; the paths are printed);
* JupyterLab - notebooks/02-calculus.ipynb run the same way in JupyterLab (same server,
  ``/lab``): its packet traces must be drawn as sequence diagrams and its live picture of the
  job server as a widget, and are photographed (tests/artifacts/calculus-lab*.png).

Each layer runs on both ipykernel major versions: the one the notebook extra installed runs
from this interpreter, the other from a venv built here that sees this interpreter's
packages and adds only ``ipykernel>=M,<M+1``. ipykernel 7 moved the shell channel to its own
thread and keeps the parent message in context variables; gearnb draws the panel only from the
calling (cell) thread, so its widget updates go out the same way on both.

The kernel specs, the Jupyter server and the browser runs are in tests/browser_harness.py; the
kernel client in tests/kernels.py.

tests/run.sh installs Chromium (apt) and the notebook extra (pip); missing pieces skip here
and fail under CI=true. Playwright drives /usr/bin/chromium: ``playwright install`` is never run.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from browser_harness import (
    ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, JupyterServer, KernelSpecs, MAJORS, PANEL_WIDGET_ERRORS, QUICKSTART,
    REPO, _assert_panels_rendered, _complete, _generated_notebook, _importable, _ipykernel_version, _panel,
    _require, _run_all_in_browser, _venv_with_ipykernel,
)
from kernels import Kernel


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecs:
    _require(_importable("ipywidgets") and _importable("ipykernel") and _importable("jupyter_client"),
             "ipywidgets / ipykernel / jupyter_client are not installed (pip install -e '.[notebook]')")
    root = tmp_path_factory.mktemp("kernels")
    here = _ipykernel_version(sys.executable)
    pythons = {}
    for major in MAJORS:
        pythons[major] = sys.executable if here.split(".")[0] == str(major) else _venv_with_ipykernel(root, major)
    return KernelSpecs(root, pythons)


# -- kernel level: the comm messages ---------------------------------------------------------

@pytest.fixture(params=MAJORS, ids=lambda m: f"ipykernel{m}")
def kernel(request: pytest.FixtureRequest, kernels: KernelSpecs) -> Iterator[Kernel]:
    k = Kernel(kernels.name(request.param), kernel_dirs=[str(kernels.kernel_dir)],
               cwd=str(kernels.kernel_dir.parent))
    try:
        messages = k.run("import ipykernel; print(ipykernel.__version__)")
        printed = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
        assert printed.strip() == kernels.versions[request.param]
        yield k
    finally:
        k.close()


def test_panel_updates_live_from_the_cell(kernel: Kernel) -> None:
    kernel.run("import time, gearnb\ngearnb.map(abs, range(4), progress=False)")  # the local cluster
    msg_id, messages = kernel.execute("""
        def slow(x):
            time.sleep(0.1)
            return x

        results = gearnb.map(slow, range(30), chunksize=1)
        assert results == list(range(30))
    """)
    panel = _panel(messages)
    assert panel["shown"] == 1 and panel["parents"] == {msg_id}, panel["parents"]
    state = panel["state"]
    assert state["max"] == 30 and state["value"] == 30 and state["bar_style"] == "success", state
    assert panel["info"].startswith("30/30 done"), panel["info"]
    # Live: the bar moved through intermediate values, sent over time while the cell ran.
    partial = [(date, s["value"]) for date, s in panel["history"] if 0 < s["value"] < 30]
    assert len({v for _, v in partial}) >= 2, panel["history"]
    finished = next(date for date, s in panel["history"] if s["bar_style"] == "success")
    assert (finished - partial[0][0]).total_seconds() >= 0.3, (partial[0][0], finished)


def test_panel_turns_red_when_a_task_fails(kernel: Kernel) -> None:
    msg_id, messages = kernel.execute("""
        import gearnb

        def boom(x):
            raise ValueError(x)

        try:
            gearnb.map(boom, range(3), chunksize=1)
        except ValueError:
            pass
        else:
            raise AssertionError("no ValueError")
    """)
    panel = _panel(messages)
    assert panel["state"]["bar_style"] == "danger", panel["state"]
    assert panel["parents"] == {msg_id}
    assert "failed" in panel["info"], panel["info"]


def test_worker_print_shows_in_the_cell_that_ran_it(kernel: Kernel) -> None:
    """Worker output is printed on gearnb's I/O thread, whose connection task was created in
    the first cell that used gearnb; ipykernel (6 and 7) picks the output's cell from a context
    variable, so gearnb prints it in the calling cell's context (Executor._attach_output)."""
    kernel.run("import gearnb\ngearnb.map(abs, range(4), progress=False)")  # first use: connects here
    msg_id, messages = kernel.execute("""
        def loud(x):
            print("hello from worker", x)
            return x

        gearnb.map(loud, range(2), chunksize=1, progress=False)
        gearnb.submit(loud, 9).result(timeout=30)
    """)
    # The cell waits for its results, so the forwarded lines arrive before its idle.
    streams = [m for m in messages if m["msg_type"] == "stream" and "hello from worker" in m["content"]["text"]]
    text = "".join(m["content"]["text"] for m in streams)
    assert text.count("hello from worker") == 3, text
    assert {m["parent_header"].get("msg_id") for m in streams} == {msg_id}


def test_many_lines_reach_the_cell_in_few_messages_each_tagged_with_its_item(kernel: Kernel) -> None:
    """Worker output is batched (gearnb/pyexec/taskio.py) and written without a flush per
    line, so the kernel's stream sends it every flush interval: few messages, on both
    ipykernels (6 keeps one buffer, 7 one per cell), all in the calling cell."""
    kernel.run("import gearnb\ngearnb.map(abs, range(4), progress=False)")
    msg_id, messages = kernel.execute("""
        def chatty(x):
            for j in range(5):
                print(f"line {j} of item {x}")
            return x

        assert gearnb.map(chatty, range(400), chunksize=50, progress=False) == list(range(400))
    """)
    streams = [m for m in messages if m["msg_type"] == "stream"]
    assert {m["parent_header"].get("msg_id") for m in streams} == {msg_id}
    lines = "".join(m["content"]["text"] for m in streams).splitlines()
    assert len(lines) == 2000 and len(streams) <= 20, (len(lines), len(streams))
    for line in lines:
        match = re.fullmatch(r"\[chatty #(\d+)\] line \d of item (\d+)", line)
        assert match and match.group(1) == match.group(2), line


# -- browser level: Notebook 7 + Chromium ----------------------------------------------------

@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory, kernels: KernelSpecs) -> Iterator[JupyterServer]:
    _require(_importable("notebook") and _importable("jupyter_server"),
             "Jupyter Notebook 7 is not installed (pip install -e '.[notebook]')")
    server = JupyterServer(tmp_path_factory.mktemp("jupyter"), kernels)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(jupyter: JupyterServer) -> Iterator[Any]:
    _require(CHROMIUM, "chromium is not installed (Debian package chromium)")
    _require(_importable("playwright"), "playwright is not installed (pip install -e '.[test]')")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                                              timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.parametrize("major", MAJORS, ids=lambda m: f"ipykernel{m}")
def test_quickstart_in_the_browser(major: int, kernels: KernelSpecs, jupyter: JupyterServer, browser: Any) -> None:
    _require(QUICKSTART.exists(), f"{QUICKSTART} is missing")
    state = _run_all_in_browser(browser, jupyter, QUICKSTART, kernels.name(major),
                                kernels.display_name(major), f"quickstart-ipykernel{major}")
    prompts = state["prompts"]
    assert len(prompts) == state["code_cells"], (f"{len(prompts)} code cells in the page, "
                                                 f"{state['code_cells']} in the file")
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), f"not every cell ran: {prompts}"
    _assert_panels_rendered(state)
    first = state["panels"][0]
    assert _complete(first), f"the first map's panel did not end full and green: {first}"
    # Every panel ends finished: full and green, or red for a map whose task raised.
    for panel in state["panels"]:
        assert _complete(panel) or "progress-bar-danger" in panel["classes"], panel


@pytest.mark.parametrize("major", MAJORS, ids=lambda m: f"ipykernel{m}")
def test_live_panel_in_the_browser(major: int, kernels: KernelSpecs, jupyter: JupyterServer, browser: Any,
                                   tmp_path: Path) -> None:
    """A map slow enough to watch: the bar must be seen at several partial widths, then full."""
    source = _generated_notebook(tmp_path, [
        "import time\nimport gearnb\ngearnb.map(abs, range(4), progress=False)",
        """
        def slow(x):
            time.sleep(0.1)
            return x

        assert gearnb.map(slow, range(40), chunksize=1) == list(range(40))
        """,
        """
        def boom(x):
            raise ValueError(x)

        try:
            gearnb.map(boom, range(3), chunksize=1)
        except ValueError:
            print("remote ValueError caught")
        """,
    ])
    state = _run_all_in_browser(browser, jupyter, source, kernels.name(major), kernels.display_name(major),
                                f"live-ipykernel{major}")
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in state["prompts"]), state["prompts"]
    _assert_panels_rendered(state)
    assert len(state["panels"]) == 2, state["panels"]
    slow, boom = state["panels"]
    assert _complete(slow) and slow["text"].count("40/40 done") == 1, slow
    partial = {s[0][0] for s in state["samples"] if s and 0 < (s[0][0] or 0) < 100}
    assert len(partial) >= 3, f"the bar was not seen moving: {state['samples']}"
    assert "progress-bar-danger" in boom["classes"] and "failed" in boom["text"], boom
    assert "remote ValueError caught" in state["text"]


LINES = 10_000
OUTPUT_CELLS = [
    # The first call starts the local cluster: the panel says so, then counts the map.
    """
    import time
    import gearnb

    def slow(x):
        time.sleep(0.1)
        return x

    assert gearnb.map(slow, range(20), chunksize=1) == list(range(20))
    """,
    f"""
    for i in range({LINES}):
        print(f"plain line {{i}}")
    print("PLAIN", "DONE")  # not the marker itself in the source: the page shows the source too
    """,
    f"""
    def chatty(x):
        for j in range(10):
            print(f"line {{j}} of item {{x}}")
        return x

    assert gearnb.map(chatty, range({LINES // 10}), progress=False) == list(range({LINES // 10}))
    print("MAP", "DONE")
    """,
]


@pytest.mark.parametrize("ui", ["notebook", "lab"])
def test_start_panel_and_worker_output_in_the_browser(ui: str, kernels: KernelSpecs, jupyter: JupyterServer,
                                                       browser: Any, tmp_path: Path) -> None:
    """In Notebook 7 and JupyterLab: the first map's panel says "starting N workers…" while the
    local cluster starts, then ends at N/N done; 10,000 lines printed by tasks of a map reach
    the cell, each tagged with its item, as a plain print loop's 10,000 lines do. The seconds
    each took to be drawn (from the previous cell's end to its last line on the page) are
    printed side by side; they are not asserted (the machine is shared)."""
    if ui == "lab":
        for parts, values in LAB_SETTINGS.items():
            settings = jupyter.root.parent / "lab-settings" / Path(*parts)
            settings.parent.mkdir(parents=True, exist_ok=True)
            settings.write_text(json.dumps(values))
    major = int(_ipykernel_version(sys.executable).split(".")[0])
    seen: dict[str, float] = {}
    starting: list[str] = []

    def watch(page: Any, state: dict[str, Any]) -> None:
        now = time.monotonic()
        for panel in state["panels"][:1]:
            if "starting" in panel["text"]:
                starting.append(panel["text"])
        prompts = state["prompts"]
        if prompts and re.fullmatch(r"\[\d+\]:", prompts[0]):
            seen.setdefault("first cell", now)
        for mark in ("PLAIN DONE", "MAP DONE"):
            if mark in state["text"]:
                seen.setdefault(mark, now)

    source = _generated_notebook(tmp_path, OUTPUT_CELLS)
    state = _run_all_in_browser(browser, jupyter, source, kernels.name(major), kernels.display_name(major),
                                f"output-{ui}", ui=ui, watch=watch)
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in state["prompts"]), state["prompts"]
    _assert_panels_rendered(state)
    assert len(state["panels"]) == 1 and _complete(state["panels"][0]), state["panels"]
    assert starting and re.search(r"starting \d+ workers?…", starting[0]), state["samples"][:5]
    text = state["text"]
    tagged = re.findall(r"\[chatty #(\d+)\] line \d of item (\d+)", text)
    assert len(tagged) == LINES and all(a == b for a, b in tagged), len(tagged)
    assert len(re.findall(r"plain line \d+", text)) == LINES
    if {"first cell", "PLAIN DONE", "MAP DONE"} <= seen.keys():
        plain = seen["PLAIN DONE"] - seen["first cell"]
        mapped = seen["MAP DONE"] - seen["PLAIN DONE"]
        print(f"{ui}: {LINES:,} lines drawn: print loop {plain:.1f} s, gearnb.map {mapped:.1f} s "
              f"(ratio {mapped / max(plain, 1e-3):.2f}; sampled every ~0.1 s)")


# -- JupyterLab: the calculus notebook's pictures --------------------------------------------

CALCULUS = REPO / "notebooks" / "02-calculus.ipynb"
# JupyterLab user settings (in the server's own settings dir): every cell rendered, none
# windowed out of the page, so the pictures far down are read and photographed from the DOM;
# no "get Jupyter news?" toast over the screenshots (and no request to the news feed).
LAB_SETTINGS = {
    ("@jupyterlab", "notebook-extension", "tracker.jupyterlab-settings"): {"windowingMode": "none"},
    ("@jupyterlab", "apputils-extension", "notification.jupyterlab-settings"): {"fetchNews": "false"},
}
# The packets the issue asks the first diagram to show (notebooks/_build/calculus.py).
PULL_MODEL = ("CAN_DO", "GRAB_JOB_UNIQ", "NO_JOB", "PRE_SLEEP", "SUBMIT_JOB", "JOB_CREATED", "NOOP",
              "JOB_ASSIGN_UNIQ", "WORK_STATUS", "WORK_COMPLETE")

# The sequence diagrams and live pictures in the page, with the size they are drawn at.
PICTURES_JS = """() => {
  const size = el => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  // What a text element shows: its own text nodes, not its <title> tooltip.
  const texts = (svg, cls) => [...svg.querySelectorAll('text.' + cls)].map(
    t => [...t.childNodes].filter(n => n.nodeType === Node.TEXT_NODE).map(n => n.textContent).join(''));
  return {
    stderr: document.querySelectorAll('.jp-Notebook [data-mime-type="application/vnd.jupyter.stderr"]').length,
    diagrams: [...document.querySelectorAll('.jp-Notebook svg[aria-label^="Gearman sequence diagram"]')].map(svg => (
      {size: size(svg), packets: texts(svg, 'packet'), lanes: texts(svg, 'lane-title')})),
    live: [...document.querySelectorAll('.jp-Notebook .gearnb-live')].map(view => {
      const svg = view.querySelector('svg[aria-label^="Gearman job server"]');
      return {size: svg ? size(svg) : [0, 0], status: (view.firstElementChild || view).textContent,
              running: svg ? texts(svg, 'running-job') : [], high: svg ? svg.querySelectorAll('rect.job.high').length : 0,
              text: svg ? svg.textContent : ''};
    }),
  };
}"""


def test_calculus_pictures_in_jupyterlab(kernels: KernelSpecs, jupyter: JupyterServer, browser: Any) -> None:
    """notebooks/02-calculus.ipynb, Run All in JupyterLab: its sequence diagrams and its live
    picture of the job server must be drawn (SVG in the page, not "Loading widget..."), with
    the pull model's packets in the first diagram. Screenshots (tests/artifacts/, printed):
    calculus-lab-sequence.png (the first diagram, whole), calculus-lab-live.png (the live
    picture after the run), calculus-lab-live-background.png and -overtaking.png (the live
    picture while the background countdown runs, and while a high job waits ahead of normal
    ones: taken when the page shows those moments), calculus-lab.png (the page at the end)."""
    _require(CALCULUS.exists(), f"{CALCULUS} is missing")
    major = int(_ipykernel_version(sys.executable).split(".")[0])
    for parts, values in LAB_SETTINGS.items():
        settings = jupyter.root.parent / "lab-settings" / Path(*parts)
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(values))
    moments = {"background": ARTIFACTS / "calculus-lab-live-background.png",
               "overtaking": ARTIFACTS / "calculus-lab-live-overtaking.png"}
    for path in moments.values():
        path.unlink(missing_ok=True)

    def watch(page: Any, state: dict[str, Any]) -> None:
        views = [v for v in page.evaluate(PICTURES_JS)["live"] if v["size"][1] > 0]
        if not views:
            return
        last = views[-1]  # every view shows the same widget; the last is in the running cell
        running = " ".join(last["running"])
        caught = None
        if "countdown" in running and "background" in running and re.search(r"\b[1-9]\d?/20\b", last["text"]):
            caught = "background"
        elif " step " in running and last["high"] >= 1:
            caught = "overtaking"
        if caught and not moments[caught].exists():
            with contextlib.suppress(Exception):
                page.locator(".jp-Notebook .gearnb-live").nth(len(views) - 1).screenshot(
                    path=str(moments[caught]), timeout=5_000)

    state = _run_all_in_browser(browser, jupyter, CALCULUS, kernels.name(major), kernels.display_name(major),
                                "calculus-lab", ui="lab", watch=watch, inspect=_photograph_pictures)
    shots = state["shots"]
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in state["prompts"]), f"not every cell ran: {state['prompts']}"
    assert len(state["prompts"]) == state["code_cells"], state["prompts"]
    errors = [e for e in PANEL_WIDGET_ERRORS if e in state["text"]]
    assert not errors, f"widget not rendered: {errors}; screenshot {shots['final']}"
    pictures = state["inspected"]
    assert pictures["stderr"] == 0, f"a cell wrote to stderr (raised?); screenshot {shots['final']}"
    # The packets are rendered: the first diagram draws the pull model, lanes and all.
    diagrams = pictures["diagrams"]
    assert len(diagrams) == 4, [d["lanes"] for d in diagrams]  # one job; the TaskSet; background; C
    first = diagrams[0]
    assert first["lanes"] == ["client 1", "job server", "worker calc-addition"], first["lanes"]
    assert all(name in first["packets"] for name in PULL_MODEL), first["packets"]
    assert first["size"][0] > 400 and first["size"][1] > 20 * len(first["packets"]), first["size"]
    assert "WORK_EXCEPTION" in diagrams[1]["packets"]  # 1/0
    assert "GRAB_JOB_ALL" in diagrams[3]["packets"]  # the C worker
    # The live picture is drawn in each cell that shows it, and stopped at the end.
    live = pictures["live"]
    assert len(live) == 4, [v["status"] for v in live]
    for view in live:
        assert view["size"][0] > 400 and view["size"][1] > 200, view["size"]
        assert "stopped" in view["status"], view["status"]
        assert "stepper" in view["text"] and "started, in order" in view["text"], view["text"][:300]
    for path in [*pictures["shots"].values(), *moments.values()]:
        if path.exists():
            print(f"screenshot: {path}")
    assert pictures["shots"]["sequence"].stat().st_size > 10_000 and pictures["shots"]["live"].stat().st_size > 10_000


def _photograph_pictures(page: Any) -> dict[str, Any]:
    """What PICTURES_JS reads, and screenshots of the first diagram (whole: its scroll box
    opened up) and of the last live picture."""
    shots = {"sequence": ARTIFACTS / "calculus-lab-sequence.png", "live": ARTIFACTS / "calculus-lab-live.png"}
    pictures = page.evaluate(PICTURES_JS)
    diagram = page.locator('.jp-Notebook svg[aria-label^="Gearman sequence diagram"]').first
    diagram.evaluate("svg => { svg.parentElement.style.maxHeight = 'none'; }")  # its scroll box
    live = page.locator(".jp-Notebook .gearnb-live").last
    # A window tall enough for either picture whole: the notebook scrolls inside the page.
    tallest = max(diagram.bounding_box()["height"], live.bounding_box()["height"])
    page.set_viewport_size({"width": 1280, "height": int(tallest) + 400})
    diagram.screenshot(path=str(shots["sequence"]))
    live.screenshot(path=str(shots["live"]))
    pictures["shots"] = shots
    return pictures
