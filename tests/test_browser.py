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

tests/run.sh installs Chromium (apt) and the notebook extra (pip); missing pieces skip here
and fail under CI=true. Playwright drives /usr/bin/chromium: ``playwright install`` is never run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from peers import IN_CI, free_port

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "notebooks" / "01-quickstart.ipynb"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
MAJORS = (6, 7)
RUN_ALL_TIMEOUT = 150  # seconds for a whole notebook, kernel start included
PANEL_WIDGET_ERRORS = ("Loading widget", "Error displaying widget")

pytestmark = pytest.mark.timeout(300)


def _require(ok: object, message: str) -> None:
    """Missing tools fail under CI=true and skip elsewhere (as peers.need does for binaries)."""
    if ok:
        return
    message += " (bash tests/run.sh installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _ipykernel_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import ipykernel; print(ipykernel.__version__)"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() if out.returncode == 0 else ""


def _venv_with_ipykernel(base: Path, major: int) -> str:
    """A venv seeing this interpreter's packages, with ``ipykernel>=major,<major+1`` on top.

    A .pth that calls site.addsitedir on this interpreter's site-packages (rather than
    --system-site-packages) also works when this interpreter is itself a venv; the venv's own
    site-packages comes first, so its ipykernel wins.
    """
    import site
    import sysconfig

    venv = base / f"ipykernel{major}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    parents = [p for p in [*site.getsitepackages(), sysconfig.get_path("purelib")] if os.path.isdir(p)]
    lines = [f"import site; site.addsitedir({p!r})" for p in dict.fromkeys(parents)]
    Path(purelib, "_gearnb_parent_site.pth").write_text("\n".join(lines) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--disable-pip-version-check",
         f"ipykernel>={major},<{major + 1}"], capture_output=True, text=True, timeout=240)
    _require(install.returncode == 0, f"could not pip-install ipykernel {major}.x into a venv: "
             f"{install.stderr.strip()[-500:]}")
    return python


class KernelSpecs:
    """``gearnb-ipykernelN`` kernel specs, one per major version, in a JUPYTER_PATH of their own."""

    def __init__(self, root: Path, pythons: dict[int, str]) -> None:
        self.jupyter_path = root / "share"
        self.kernel_dir = self.jupyter_path / "kernels"
        self.versions: dict[int, str] = {}
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        for major, python in pythons.items():
            version = _ipykernel_version(python)
            assert version.split(".")[0] == str(major), f"{python} has ipykernel {version!r}, not {major}.x"
            self.versions[major] = version
            spec = self.kernel_dir / self.name(major)
            spec.mkdir(parents=True)
            (spec / "kernel.json").write_text(json.dumps({
                "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": self.display_name(major),
                "language": "python",
                "env": {"PYTHONPATH": pythonpath},  # this checkout's gearnb, also in the workers
            }))

    @staticmethod
    def name(major: int) -> str:
        return f"gearnb-ipykernel{major}"

    def display_name(self, major: int) -> str:
        return f"Python 3 (ipykernel {self.versions[major]})"


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

class Kernel:
    """A real kernel from a kernel spec; ``run`` executes one cell and returns its IOPub messages."""

    def __init__(self, specs: KernelSpecs, major: int) -> None:
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        self.km = KernelManager(kernel_name=specs.name(major),
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs.kernel_dir)]))
        self.km.start_kernel(cwd=str(specs.kernel_dir.parent))
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=60)
        except BaseException:
            self.close()
            raise
        self.cells: dict[str, int] = {}  # msg_id of an execute request -> cell number

    def run(self, code: str, timeout: float = 60) -> tuple[str, list[dict[str, Any]]]:
        msg_id = self.kc.execute(textwrap.dedent(code))
        self.cells[msg_id] = len(self.cells)
        messages = []
        deadline = time.monotonic() + timeout
        while True:  # IOPub up to this request's idle: everything the cell sent
            msg = self.kc.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.1))
            messages.append(msg)
            if (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                    and msg["parent_header"].get("msg_id") == msg_id):
                break
        while True:  # skip earlier replies (wait_for_ready's kernel_info)
            reply = self.kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 1))
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        errors = [m["content"] for m in messages if m["msg_type"] == "error"]
        assert reply["content"]["status"] == "ok", errors or reply["content"]
        return msg_id, messages

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)  # lets the kernel stop its local cluster


@pytest.fixture(params=MAJORS, ids=lambda m: f"ipykernel{m}")
def kernel(request: pytest.FixtureRequest, kernels: KernelSpecs) -> Iterator[Kernel]:
    k = Kernel(kernels, request.param)
    try:
        _, messages = k.run("import ipykernel; print(ipykernel.__version__)")
        printed = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
        assert printed.strip() == kernels.versions[request.param]
        yield k
    finally:
        k.close()


def _panel(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The progress panel a cell opened: final states, the bar's history, the messages' parents."""
    states: dict[str, dict[str, Any]] = {}
    sent: dict[str, list[dict[str, Any]]] = {}  # comm_id -> its comm_open and update messages
    history: list[tuple[Any, dict[str, Any]]] = []  # (date sent, bar state) for every bar update
    for m in messages:
        content = m["content"]
        if m["msg_type"] == "comm_open":
            states[content["comm_id"]] = dict(content["data"]["state"])
        elif m["msg_type"] == "comm_msg" and content["data"].get("method") == "update":
            states[content["comm_id"]].update(content["data"]["state"])
        else:
            continue
        sent.setdefault(content["comm_id"], []).append(m)
        if states[content["comm_id"]]["_model_name"] == "FloatProgressModel":
            history.append((m["header"]["date"], content["comm_id"], dict(states[content["comm_id"]])))
    boxes = [c for c, s in states.items()
             if s["_model_name"] == "VBoxModel" and "gearnb-progress" in s.get("_dom_classes", [])]
    assert len(boxes) == 1, f"one gearnb-progress panel expected, got {len(boxes)}"
    box = states[boxes[0]]
    header, info = (states[c.removeprefix("IPY_MODEL_")] for c in box["children"][:2])
    bar = next(c.removeprefix("IPY_MODEL_") for c in header["children"]
               if states[c.removeprefix("IPY_MODEL_")]["_model_name"] == "FloatProgressModel")
    shown = [m for m in messages if m["msg_type"] == "display_data"
             and m["content"]["data"].get("application/vnd.jupyter.widget-view+json", {}).get("model_id") == boxes[0]]
    parents = {m["parent_header"].get("msg_id") for m in [*sent[boxes[0]], *sent[bar], *shown]}
    return {"state": states[bar], "history": [(d, s) for d, c, s in history if c == bar],
            "info": re.sub("<[^>]+>", "", info["value"]), "shown": len(shown), "parents": parents}


def test_panel_updates_live_from_the_cell(kernel: Kernel) -> None:
    kernel.run("import time, gearnb\ngearnb.map(abs, range(4), progress=False)")  # the local cluster
    msg_id, messages = kernel.run("""
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
    msg_id, messages = kernel.run("""
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
    msg_id, messages = kernel.run("""
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
    msg_id, messages = kernel.run("""
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

class JupyterServer:
    """``jupyter notebook`` on a free loopback port, a known token, a temporary root dir."""

    def __init__(self, root: Path, specs: KernelSpecs) -> None:
        self.root = root / "notebooks"
        self.root.mkdir()
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.log_path = root / "jupyter.log"
        env = dict(os.environ,
                   JUPYTER_PATH=str(specs.jupyter_path),      # the gearnb-ipykernelN specs
                   JUPYTER_CONFIG_DIR=str(root / "config"),   # no user config
                   JUPYTER_RUNTIME_DIR=str(root / "runtime"),
                   JUPYTERLAB_SETTINGS_DIR=str(root / "lab-settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(root / "lab-workspaces"),
                   IPYTHONDIR=str(root / "ipython"),
                   JUPYTER_PLATFORM_DIRS="1")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "notebook", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=str(self.root), start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            try:
                self.api("GET", "api/status", timeout=2)
                break
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Jupyter did not start; its log:\n{self.tail()}") from None
                time.sleep(0.25)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        request = urllib.request.Request(
            self.url(path), method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
        return json.loads(data) if data else None

    def tail(self, lines: int = 40) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # shut the kernels down first (they stop their clusters)
            for session in self.api("GET", "api/sessions", timeout=5):
                self.api("DELETE", f"api/sessions/{session['id']}", timeout=20)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


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


# What the page shows, read in one round trip: prompts, kernel status, every gearnb panel.
# textContent, not innerText: Notebook 7 skips rendering cells scrolled out of view
# (content-visibility), and innerText of those is empty.
PAGE_STATE_JS = """() => {
  const nb = document.querySelector('.jp-Notebook');
  const panels = [...document.querySelectorAll('.jp-Notebook .gearnb-progress')].map(panel => {
    const bar = panel.querySelector('.progress .progress-bar');  // the overall bar comes first
    return {width: bar ? parseFloat(bar.style.width || '0') : null,
            classes: bar ? bar.className : '', text: panel.textContent};
  });
  const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
  return {
    prompts: [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
               .map(e => e.textContent.trim()),
    status: indicator ? indicator.dataset.status : null,
    kernel: (document.querySelector('.jp-Toolbar-kernelName') || {}).textContent || '',
    panels: panels,
    text: nb ? nb.textContent : '',
    dialog: !!document.querySelector('.jp-Dialog'),
  };
}"""


def _notebook_copy(server: JupyterServer, source: Path, kernel_name: str, display_name: str) -> tuple[str, int]:
    """Copy a notebook into the server's root, pointed at one kernel spec; (name, code cells)."""
    nb = json.loads(source.read_text())
    nb.setdefault("metadata", {})["kernelspec"] = {"name": kernel_name, "display_name": display_name,
                                                   "language": "python"}
    for cell in nb["cells"]:  # start from a clean notebook even if the source was saved with outputs
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    name = f"{source.stem}-{kernel_name}.ipynb"
    (server.root / name).write_text(json.dumps(nb, indent=1))
    return name, sum(c["cell_type"] == "code" for c in nb["cells"])


def _generated_notebook(tmp_path: Path, cells: list[str]) -> Path:
    path = tmp_path / "live.ipynb"
    path.write_text(json.dumps({
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None, "outputs": [],
                   "source": textwrap.dedent(code).strip()} for i, code in enumerate(cells)]}))
    return path


# Where each front end opens a notebook.
UI_PATHS = {"notebook": "notebooks/{name}", "lab": "lab/tree/{name}"}


def _run_all_in_browser(browser: Any, server: JupyterServer, source: Path, kernel_name: str,
                        display_name: str, shot: str, *, ui: str = "notebook",
                        watch: Callable[[Any, dict[str, Any]], None] | None = None,
                        inspect: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Open a notebook in Notebook 7 (``ui="notebook"``) or JupyterLab (``"lab"``), Run All
    Cells, sample the page until the kernel is done; ``watch(page, state)`` is called with
    each sample (to catch a moment on a screenshot), ``inspect(page)`` once at the end, its
    result kept as ``state["inspected"]``.

    Returns the final page state, the distinct panel states seen on the way (``samples``) and
    the screenshot paths. The session is deleted at the end, which stops the kernel.
    """
    name, code_cells = _notebook_copy(server, source, kernel_name, display_name)
    # A session made up front starts the wanted kernel before the page opens.
    session = server.api("POST", "api/sessions", {"path": name, "type": "notebook", "name": name,
                                                  "kernel": {"name": kernel_name}})
    if ui == "lab":
        # JupyterLab reopens the notebooks of its saved workspace: only this one is wanted.
        with contextlib.suppress(urllib.error.HTTPError):
            server.api("DELETE", "lab/api/workspaces/default")
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(30_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = {"final": ARTIFACTS / f"{shot}.png", "panel": ARTIFACTS / f"{shot}-panel.png",
             "running": ARTIFACTS / f"{shot}-running.png"}
    for path in shots.values():
        path.unlink(missing_ok=True)
    samples: list[list[tuple[float | None, str]]] = []
    try:
        page.goto(server.url(UI_PATHS[ui].format(name=name) + f"?token={server.token}"), timeout=60_000)
        page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
        # Wait until the page shows our kernel, idle, with no dialog, for a moment. Notebook 7
        # sometimes asks for a kernel even for a notebook with a running session ("Select
        # Kernel", the notebook's own kernel preselected): accept that dialog whenever it shows.
        deadline = time.monotonic() + 60
        ready_since = None
        while True:
            state = page.evaluate(PAGE_STATE_JS)
            if state["dialog"]:
                page.click(".jp-Dialog .jp-mod-accept")
                ready_since = None
            elif state["status"] == "idle" and display_name in state["kernel"]:
                ready_since = ready_since or time.monotonic()
                if time.monotonic() - ready_since > 1.5:
                    break
            else:
                ready_since = None
            assert time.monotonic() < deadline, (f"kernel {display_name!r} not idle in the page: "
                                                 f"{state['kernel']!r} {state['status']}\n{server.tail()}")
            time.sleep(0.2)

        def run_all() -> None:
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.click("li[data-command='runmenu:run-all']")

        run_all()
        panel_cells = page.locator(".jp-Notebook .jp-Cell").filter(has=page.locator(".gearnb-progress"))
        started = False
        quiet_since = None
        deadline = time.monotonic() + RUN_ALL_TIMEOUT
        while True:
            state = page.evaluate(PAGE_STATE_JS)
            if time.monotonic() > deadline:
                page.screenshot(path=str(shots["final"]))
                raise AssertionError(f"Run All did not finish in {RUN_ALL_TIMEOUT} s: prompts {state['prompts']}, "
                                     f"status {state['status']}; screenshot {shots['final']}\n{server.tail()}")
            if state["dialog"]:  # as above; then Run All again if nothing had started
                page.click(".jp-Dialog .jp-mod-accept")
                if not started:
                    time.sleep(1)
                    run_all()
                continue
            if watch is not None:
                watch(page, state)
            panels = [(p["width"], p["classes"]) for p in state["panels"]]
            if not samples or samples[-1] != panels:
                samples.append(panels)
                moving = [i for i, (w, _) in enumerate(panels) if 0 < (w or 0) < 100]
                if moving and not shots["running"].exists():  # the cell of a bar in motion
                    with contextlib.suppress(Exception):
                        panel_cells.nth(moving[0]).screenshot(path=str(shots["running"]), timeout=5_000)
            prompts = state["prompts"]
            busy = any("*" in p for p in prompts)
            started = started or busy or any(re.fullmatch(r"\[\d+\]:", p) for p in prompts)
            if started and not busy and state["status"] == "idle":
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 1.0:
                    break
            else:
                quiet_since = None
            time.sleep(0.1)
        if panel_cells.count():
            panel_cells.first.screenshot(path=str(shots["panel"]))
            panel_cells.first.scroll_into_view_if_needed()
        page.screenshot(path=str(shots["final"]))
        for path in shots.values():
            if path.exists():
                print(f"screenshot: {path}")
        state["inspected"] = inspect(page) if inspect is not None else None
        state["samples"] = samples
        state["code_cells"] = code_cells
        state["shots"] = shots
        return state
    finally:
        page.close()
        with contextlib.suppress(Exception):
            server.api("DELETE", f"api/sessions/{session['id']}", timeout=20)


def _assert_panels_rendered(state: dict[str, Any]) -> None:
    errors = [e for e in PANEL_WIDGET_ERRORS if e in state["text"]]
    assert not errors, f"widget not rendered: {errors}; screenshot {state['shots']['final']}"
    assert state["panels"], f"no .gearnb-progress panel in the page; screenshot {state['shots']['final']}"


def _complete(panel: dict[str, Any]) -> bool:
    match = re.search(r"(\d+)/(\d+) done", panel["text"])
    return (panel["width"] == 100 and "progress-bar-success" in panel["classes"]
            and match is not None and match.group(1) == match.group(2))


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
