"""Several hosts: a job server, two worker hosts and a client, each in a network namespace
of its own; one worker host's link is cut in the middle of a map.

Topology (the addresses exist only inside the namespaces this test makes; nothing is sent
anywhere else)::

                          gnb<pid>-sw: bridge br0
            p-srv /         p-w1 |          p-w2 |         \\ p-cli
    gnb<pid>-srv 10.213.0.1  gnb<pid>-w1 .11  gnb<pid>-w2 .12  gnb<pid>-cli .21
      gearmand :4730         gearnb worker    gearnb worker    python: Executor.gmap
                             2 processes      2 processes      (300 tasks of 20 ms)

Cutting a link takes the worker host's port on the bridge down: nothing is closed and no
FIN or RST reaches anyone, as when a cable or a switch dies. The cut workers' TCP
connections stay ESTABLISHED on the job server, which keeps their jobs until it declares
the connection dead; only then does it requeue them. What was measured:

* gearmand's default: its sockets have SO_KEEPALIVE with the system's 7200 s idle time, so
  the jobs the cut host held stay assigned for over two hours: the map hangs.
* ``gearmand --keepalive --keepalive-idle 1 --keepalive-interval 1 --keepalive-count 3``:
  a connection with nothing in flight is dropped ~4 s after the cut ("closing connection
  due to previous errno error(Connection timed out)"), its job requeued, the map completes.
* Keepalive never probes a connection with unacknowledged data: if the cut catches a
  JOB_ASSIGN gearmand has just sent (``moment="assign-in-flight"`` makes that happen on
  purpose), the socket sits in retransmission (``timer:(on,...)``) for tcp_retries2 = 15,
  ~15 minutes. ``net.ipv4.tcp_retries2=4`` on the server host (per network namespace: set
  here in the server's namespace only) gives up after 0.2 * (2 ** 5 - 1) = 6.2 s.
* CAN_DO_TIMEOUT does not help with gearmand 1.1.20: with a worker that never sleeps
  between jobs, the timer fires for a stale job (an earlier, long finished job of that
  connection), not the job the cut worker holds, and the map hangs all the same.

After the map the link comes back: the cut workers' retransmitted result + GRAB_JOB meets
an RST from gearmand, they reconnect and register again (about 1 s).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

import gearnb
from peers import GEARMAND, IN_CI, need, wait_until

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(90)

SUBNET = "10.213.0"
HOSTS = {"srv": 1, "w1": 11, "w2": 12, "cli": 21}  # role: last octet of its address
PORT = 4730
KEY = b"netns-test-cluster-key".ljust(32, b"k")
CLONE_NEWNET = 0x40000000
CMD_TIMEOUT = 15  # seconds for any one ip(8) / bridge(8) / ss(8) command

# What a deployment on an unreliable network would set on the gearmand host.
GEARMAND_KEEPALIVE = ("--keepalive", "--keepalive-idle", "1", "--keepalive-interval", "1",
                      "--keepalive-count", "3")
SERVER_SYSCTLS = {"net/ipv4/tcp_retries2": "4"}


def require_root_and_iproute2() -> None:
    """Not root: fail under CI=true, skip elsewhere. A missing ip/bridge: as peers.need()."""
    if os.geteuid() != 0:
        message = "network namespaces need root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    for tool in ("ip", "bridge"):
        need(shutil.which(tool), f"{tool}(8) from iproute2")


class Lan:
    """Network namespaces joined by veth pairs to a bridge in a namespace of its own.

    Every name carries this process's pid, so two runs never collide, and every interface
    is made directly inside one of our namespaces (none in the caller's).
    """

    def __init__(self, roles: dict[str, int]) -> None:
        tag = f"gnb{os.getpid()}"
        self.switch = f"{tag}-sw"
        self.roles = roles
        self.ns = {role: f"{tag}-{role}" for role in roles}
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def ip(self, role: str) -> str:
        return f"{SUBNET}.{self.roles[role]}"

    @staticmethod
    def run(*cmd: str, input: str | None = None) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT, input=input)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def exec(self, role: str, *cmd: str, input: str | None = None) -> str:
        return self.run("ip", "netns", "exec", self.ns[role], *cmd, input=input)

    def build(self) -> Lan:
        sw = self.switch
        self.run("ip", "netns", "add", sw)
        self.made.append(sw)
        self.run("ip", "-n", sw, "link", "set", "lo", "up")
        self.run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        self.run("ip", "-n", sw, "link", "set", "br0", "up")
        for role, namespace in self.ns.items():
            self.run("ip", "netns", "add", namespace)
            self.made.append(namespace)
            self.run("ip", "-n", namespace, "link", "set", "lo", "up")
            port = f"p-{role}"
            self.run("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                     "netns", namespace)
            self.run("ip", "-n", sw, "link", "set", port, "master", "br0", "up")
            self.run("ip", "-n", namespace, "addr", "add", f"{self.ip(role)}/24", "dev", "eth0")
            self.run("ip", "-n", namespace, "link", "set", "eth0", "up")
        return self

    def sysctl(self, role: str, name: str, value: str) -> None:
        """Set /proc/sys/<name> as seen from the role's namespace (net.* is per namespace)."""
        self.exec(role, "tee", f"/proc/sys/{name}", input=value)
        assert self.exec(role, "cat", f"/proc/sys/{name}").strip() == value

    def cut(self, role: str) -> None:
        """The host's port on the switch goes down: its packets go nowhere, nobody is told."""
        self.run("ip", "-n", self.switch, "link", "set", f"p-{role}", "down")

    def block_inbound(self, role: str) -> None:
        """Frames towards the host are dropped, frames from it still pass: the switch forgets
        where the host is and may neither learn it again nor flood to its port."""
        port = f"p-{role}"
        self.run("bridge", "-n", self.switch, "link", "set", "dev", port, "learning", "off", "flood", "off")
        for line in self.run("bridge", "-n", self.switch, "fdb", "show", "dev", port).splitlines():
            if line.strip() and "permanent" not in line:
                self.run("bridge", "-n", self.switch, "fdb", "del", line.split()[0], "dev", port, "master")

    def restore(self, role: str) -> None:
        port = f"p-{role}"
        self.run("bridge", "-n", self.switch, "link", "set", "dev", port, "learning", "on", "flood", "on")
        self.run("ip", "-n", self.switch, "link", "set", port, "up")

    def sockets(self, role: str, peer: str) -> str:
        """ss(8) on the role's TCP sockets to ``peer``: Send-Q and the running timer."""
        try:
            return self.exec(role, "ss", "-tnoH", "dst", self.ip(peer))
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            return f"(ss: {exc})"

    def popen(self, role: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns[role], *cmd], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def call(self, role: str, fn: Callable[[], Any], timeout: float = 10) -> Any:
        """``fn()`` on a thread that has joined the role's network namespace (so do the sockets
        it opens); the test's own threads stay where they are."""
        outcome: dict[str, Any] = {}

        def body() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/run/netns/{self.ns[role]}", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                outcome["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller
                outcome["error"] = exc

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{fn!r} in {role} took over {timeout} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def destroy(self) -> list[str]:
        """Stop our processes, then anything left in our namespaces, then delete them.
        Returns what was not as expected (leftover processes, failed deletions)."""
        problems = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()  # gearmand, a worker launcher (stops its children), the client
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                problems.append(f"pid {proc.pid} ignored SIGTERM")
                proc.kill()
                proc.wait(5)
        for namespace in reversed(self.made):
            # Leftovers (a worker child whose launcher died, say) are ours: they are in our namespaces.
            try:
                pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True,
                                      timeout=CMD_TIMEOUT).stdout.split()
            except subprocess.TimeoutExpired:
                pids = []
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                    problems.append(f"killed leftover pid {pid} in {namespace}")
                except ProcessLookupError:
                    pass
            try:
                done = subprocess.run(["ip", "netns", "del", namespace], capture_output=True, text=True,
                                      timeout=CMD_TIMEOUT)
                if done.returncode:
                    problems.append(f"ip netns del {namespace}: {done.stderr.strip()}")
            except subprocess.TimeoutExpired:
                problems.append(f"ip netns del {namespace}: timed out")
        self.made.clear()
        return problems


# The client host's program: one map, its outcome written as JSON.
CLIENT_SCRIPT = r'''
import json, os, sys, time
import gearnb

server, runs_dir, out, n, pause = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])

def task(i):
    # Runs on a worker host (NETNS_HOST names it): a line when it starts, a line when it ends.
    import os, time
    path = os.path.join(runs_dir, "runs-" + os.environ["NETNS_HOST"] + ".txt")
    with open(path, "a") as f:
        f.write("%d start %d\n" % (i, os.getpid()))
    time.sleep(pause)
    with open(path, "a") as f:
        f.write("%d end %d\n" % (i, os.getpid()))
    return i * i

executor = gearnb.Executor(server, key=os.environ["GEARNB_KEY"], show_output=False)
report = {"started": time.time()}
try:
    report["results"] = executor.gmap(task, range(n), chunksize=1, timeout=float(os.environ["MAP_TIMEOUT"]))
except BaseException as exc:
    report["error"] = repr(exc)
report["finished"] = time.time()
executor.shutdown(wait=False, cancel_futures=True)
with open(out + ".tmp", "w") as f:
    json.dump(report, f)
os.rename(out + ".tmp", out)
'''


def read_runs(runs_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """host: [(task index, "start" | "end")] from the per-host run files."""
    out: dict[str, list[tuple[int, str]]] = {}
    for path in sorted(runs_dir.glob("runs-*.txt")):
        rows = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:  # a line being written just now is left for the next look
                rows.append((int(parts[0]), parts[1]))
        out[path.stem[len("runs-"):]] = rows
    return out


def starts(runs: dict[str, list[tuple[int, str]]], host: str | None = None) -> int:
    return sum(1 for h, rows in runs.items() if host in (None, h) for _, kind in rows if kind == "start")


def run_cut_map(tmp: Path, *, tasks: int = 300, pause: float = 0.02, moment: str = "link-cut",
                gearmand_args: tuple[str, ...] = GEARMAND_KEEPALIVE,
                server_sysctls: dict[str, str] | None = None, cut_after: int = 60,
                map_timeout: float = 30.0, server_kind: str = "gearmand",
                worker_args: tuple[str, ...] = (), worker_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Build the LAN, run the map from the client host, cut w1 mid-map, then restore it.

    ``moment``: "link-cut" cuts whenever the map is under way; "assign-in-flight" first drops
    only the packets towards w1 for a moment, so that gearmand's JOB_ASSIGN replies to w1's
    GRAB_JOBs are unacknowledged when the link goes. Returns the facts, times in seconds
    after the cut. Everything made is removed before it returns or raises.
    """
    gearmand = need(GEARMAND, "gearmand") if server_kind == "gearmand" else ""
    lan = Lan(HOSTS)
    facts: dict[str, Any] = {"timeline": []}
    runs_dir = tmp / "runs"
    runs_dir.mkdir()
    server = f"{lan.ip('srv')}:{PORT}"

    def note(what: str) -> None:
        facts["timeline"].append((round(time.monotonic() - facts["t_cut"], 2), what))

    def admin(fn: Callable[[gearnb.Admin], Any]) -> Any:
        def query() -> Any:
            with gearnb.Admin(server, timeout=3) as a:
                return fn(a)
        return lan.call("srv", query)

    def workers_by_host() -> Counter[str]:
        return Counter(w.client_id for w in admin(lambda a: a.workers()) if "pyexec" in w.functions)

    try:
        lan.build()
        for name, value in (server_sysctls or {}).items():
            lan.sysctl("srv", name, value)
        if server_kind == "gearmand":
            lan.popen("srv", [gearmand, "--listen", lan.ip("srv"), "--port", str(PORT), "--threads", "1",
                              "--log-file", str(tmp / "gearmand.log"), "--verbose", "WARNING",
                              "--pid-file", str(tmp / "gearmand.pid"), *gearmand_args], tmp / "gearmand.out")
        else:  # gearnb's own job server, for comparison
            lan.popen("srv", [sys.executable, "-m", "gearnb", "server", "--host", lan.ip("srv"),
                              "--port", str(PORT)], tmp / "gearmand.log")

        def listening() -> bool:
            try:
                return bool(admin(lambda a: a.version()))
            except OSError:
                return False
        wait_until(listening, timeout=10, interval=0.1)

        for host in ("w1", "w2"):
            env = dict(os.environ, GEARNB_KEY=KEY.hex(), NETNS_HOST=host, **(worker_env or {}))
            env.pop("GEARNB_WORKER_CHILD", None)
            lan.popen(host, [sys.executable, "-m", "gearnb", "-v", "worker", "--servers", server,
                             "--processes", "2", "--client-id", host, *worker_args], tmp / f"worker-{host}.log", env)
        wait_until(lambda: workers_by_host() == {"w1": 2, "w2": 2}, timeout=20, interval=0.1)

        script = tmp / "client.py"
        script.write_text(CLIENT_SCRIPT)
        out = tmp / "client.json"
        env = dict(os.environ, GEARNB_KEY=KEY.hex(), MAP_TIMEOUT=str(map_timeout))
        client = lan.popen("cli", [sys.executable, str(script), server, str(runs_dir), str(out), str(tasks),
                                   str(pause)], tmp / "client.log", env)

        # Cut w1 once the map is well under way and w1 has taken its share.
        wait_until(lambda: (lambda r: starts(r) >= cut_after and starts(r, "w1") >= 10)(read_runs(runs_dir)),
                   timeout=20, interval=0.01)
        if moment == "assign-in-flight":
            # w1's workers finish their jobs; their results and next GRAB_JOBs reach gearmand,
            # whose JOB_ASSIGN answers do not (nor its ACKs).
            lan.block_inbound("w1")
            time.sleep(5 * pause + 0.1)
        lan.cut("w1")
        facts["t_cut"] = time.monotonic()
        facts["cut_wall"] = time.time()
        facts["starts_at_cut"] = {h: starts(read_runs(runs_dir), h) for h in ("w1", "w2")}
        note("w1 cut")

        # Watch the server's view while the client runs: when do w1's workers go away?
        dropped = False
        deadline = time.monotonic() + map_timeout + 5
        while client.poll() is None and time.monotonic() < deadline:
            if "srv_sockets_after_cut" not in facts and time.monotonic() - facts["t_cut"] > 0.5:
                facts["srv_sockets_after_cut"] = lan.sockets("srv", "w1")
                facts["w1_sockets_after_cut"] = lan.sockets("w1", "srv")
            if not dropped and workers_by_host().get("w1", 0) == 0:
                dropped = True
                note("the job server dropped w1's workers")
            time.sleep(0.1)
        if client.poll() is None:
            facts["srv_sockets_stuck"] = lan.sockets("srv", "w1")
            facts["status_stuck"] = admin(lambda a: a.status())
            client.kill()
        client.wait(10)
        note(f"client exited ({client.returncode})")
        if not dropped and workers_by_host().get("w1", 0) == 0:
            note("the job server dropped w1's workers")
        facts["report"] = json.loads(out.read_text()) if out.exists() else {"error": "no report"}
        if "results" in facts["report"]:
            facts["map_done_after_cut"] = round(facts["report"]["finished"] - facts["cut_wall"], 2)
        facts["runs"] = read_runs(runs_dir)

        # The link comes back: the cut host must join again by itself.
        lan.restore("w1")
        note("w1 restored")
        try:
            wait_until(lambda: workers_by_host() == {"w1": 2, "w2": 2}, timeout=20, interval=0.1)
            note("w1's workers registered again")
            facts["rejoined"] = True
        except AssertionError:
            facts["rejoined"] = False
        for name in ("worker-w1.log", "gearmand.log"):
            path = tmp / name
            facts[name] = path.read_text(errors="replace")[-3000:] if path.exists() else ""
        return facts
    finally:
        facts["cleanup"] = lan.destroy()


def tally(tasks: int, facts: dict[str, Any]) -> dict[str, Any]:
    """Submitted, completed (results), runs and repeated runs, from the run files."""
    runs = facts["runs"]
    started = Counter(i for rows in runs.values() for i, kind in rows if kind == "start")
    ended = Counter(i for rows in runs.values() for i, kind in rows if kind == "end")
    results = facts["report"].get("results") or []
    return {
        "submitted": tasks,
        "completed": len(results),
        "duplicated_results": len(results) - len(set(results)),
        "runs": sum(started.values()),
        "runs_by_host": {h: sum(1 for _, kind in rows if kind == "start") for h, rows in runs.items()},
        "ran_twice": sorted(i for i, n in started.items() if n > 1),
        "finished_twice": sorted(i for i, n in ended.items() if n > 1),
        "never_ran": sorted(set(range(tasks)) - set(started)),
    }


@pytest.mark.parametrize("moment", ["link-cut", "assign-in-flight"])
def test_worker_host_cut_mid_map(tmp_path, moment):
    require_root_and_iproute2()
    tasks = 300
    facts = run_cut_map(tmp_path, tasks=tasks, pause=0.02, moment=moment,
                        gearmand_args=GEARMAND_KEEPALIVE, server_sysctls=SERVER_SYSCTLS)
    counts = tally(tasks, facts)
    summary = {k: facts.get(k) for k in ("timeline", "map_done_after_cut", "starts_at_cut",
                                         "srv_sockets_after_cut", "rejoined", "cleanup")}
    for key, value in {"moment": moment, "counts": counts, **summary}.items():
        print(f"{key}: {json.dumps(value)}")  # shown with -s, or under a failure
    context = json.dumps({"counts": counts, **summary, "gearmand.log": facts.get("gearmand.log"),
                          "status_stuck": repr(facts.get("status_stuck"))}, indent=1)

    # Every result exactly once, in order, nothing lost.
    assert "error" not in facts["report"], context
    assert facts["report"]["results"] == [i * i for i in range(tasks)], context
    assert counts["never_ran"] == [], context
    assert counts["runs_by_host"].get("w1", 0) >= 10 and counts["runs_by_host"].get("w2", 0) > 0, context
    # Repeated runs are the jobs w1 was running when cut (its results were lost): one per
    # worker process at most. Their second run's result is the only one delivered.
    assert counts["runs"] - tasks == len(counts["ran_twice"]) <= 2, context
    if moment == "assign-in-flight":
        # The cut caught unacknowledged JOB_ASSIGNs (keepalive cannot help there); w1 never
        # got those jobs, so nothing ran twice.
        in_flight = [line for line in facts["srv_sockets_after_cut"].splitlines() if "timer:(on," in line]
        assert in_flight, context
        assert counts["ran_twice"] == [], context
    # Bounded: keepalive (~4 s) or tcp_retries2 (~6.2 s) dropped the cut connections.
    assert any(what == "the job server dropped w1's workers" for _, what in facts["timeline"]), context
    assert facts["map_done_after_cut"] < 15, context
    assert facts["rejoined"], context
    assert facts["cleanup"] == [], context
