"""The browser tests' harness (tests/test_browser.py): kernel specs for ipykernel 6 and 7, a
Jupyter server on a free loopback port, and a notebook run in Chromium through Playwright, with
what the page shows read back. Order: KernelSpecs (a venv per other ipykernel major), then
JupyterServer, then _run_all_in_browser for each notebook; _panel reads a kernel's widget
messages."""

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
from typing import Any, Callable

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

