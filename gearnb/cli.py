"""The ``gearnb`` command: server, worker, local, key, status, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__
from .limits import MAX_PACKET_ENV, parse_size
from .server.bounds import FIRST_PACKET_TIMEOUT, STALL_TIMEOUT
from .server.core import DEFAULT_JOB_RETRIES


def _server(args: argparse.Namespace) -> int:
    from .supervisor import die_with_parent
    from .server import serve

    die_with_parent()
    from .server.persistence import open_queue

    serve(args.host, args.port, max_packet_size=args.max_packet_size, job_retries=args.job_retries,
          handle_prefix=args.job_handle_prefix, exceptions_default=args.exceptions,
          queue=open_queue(args.queue), ssl=_server_tls(args), can_do_timeout_seconds=args.can_do_timeout_seconds,
          max_memory=args.max_memory, max_connections=args.max_connections,
          first_packet_timeout=args.first_packet_timeout, stall_timeout=args.stall_timeout)
    return 0


def _server_tls(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if not args.ssl_cert:
        return None
    from .tls import server_context

    return server_context(args.ssl_cert, args.ssl_key, args.ssl_ca)


def _client_tls(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .tls import client_context_from

    try:
        return client_context_from(args.ssl_ca, args.ssl_cert, args.ssl_key)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"gearnb: TLS: {exc}") from None


def _worker(args: argparse.Namespace) -> int:
    from .launcher import run_workers

    _client_tls(args)  # files that do not load stop it here, not in each worker process
    return run_workers(args.servers, args.processes, imports=args.imports, client_id=args.client_id,
                       key_file=args.key_file, job_timeout=args.job_timeout,
                       exception_packets=args.exception_packets, max_packet_size=args.max_packet_size,
                       tls=(args.ssl_ca, args.ssl_cert, args.ssl_key))


def _key_file_or_exit(path: str, key: bytes | None = None) -> bytes:
    """Create the key file at ``path`` (0600, never over an existing file), or exit saying why."""
    from .pyexec.keys import create_key_file

    try:
        return create_key_file(path, key)
    except FileExistsError:
        raise SystemExit(f"gearnb: {path} exists; a key file is never overwritten: remove it or choose another "
                         f"path") from None
    except OSError as exc:
        raise SystemExit(f"gearnb: cannot create the key file {path}: {exc.strerror or exc}") from None


def _key_new(args: argparse.Namespace) -> int:
    _key_file_or_exit(args.path)
    # The path only: a key printed ends up in terminal scrollback, logs and notebooks.
    print(f"a new cluster key is in {args.path} (mode 600); give it to workers and notebooks with "
          f"--key-file {args.path} / key_file={args.path!r} / GEARNB_KEY_FILE={args.path}")
    return 0


def _local(args: argparse.Namespace) -> int:
    import shutil
    import signal
    import tempfile
    import time

    from .cluster import LocalCluster

    # A plain flag polled, not a threading.Event: Event.set() in a signal handler can deadlock
    # when a second SIGTERM arrives while the first handler holds the Event's lock. Installed
    # first: a SIGTERM sent as soon as the "Ctrl-C stops it" line is read must not kill us
    # before the cluster is closed.
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    cluster = LocalCluster(args.workers, port=args.port, imports=tuple(args.imports),
                           max_packet_size=args.max_packet_size)
    key_file = args.key_file
    private_dir = None
    if not key_file:  # the key is never printed: it goes to a file only this user can read
        private_dir = tempfile.mkdtemp(prefix="gearnb-local-")  # mode 700
        key_file = os.path.join(private_dir, "cluster.key")
    reused = os.path.exists(key_file)
    if reused:
        from .pyexec.keys import read_key_file

        cluster.key = read_key_file(key_file)  # a restart keeps its key: connected notebooks carry on
    else:
        _key_file_or_exit(key_file, cluster.key)  # before anything starts: a bad path starts nothing
    try:
        cluster.start()
    except BaseException:
        if private_dir:
            shutil.rmtree(private_dir, ignore_errors=True)
        raise
    print(f"gearnb local cluster: job server {cluster.address}, {cluster.n_workers} workers "
          f"(pids {' '.join(map(str, cluster.worker_pids()))})")
    print("Connect from a notebook with:")
    print(f"    import gearnb; gearnb.connect({cluster.address!r}, key_file={key_file!r})")
    if private_dir:
        print("(the key file is removed when this stops; --key-file PATH keeps one)")
    elif reused:
        print(f"(the cluster key already in {key_file})")
    print("Ctrl-C stops it.", flush=True)
    try:
        while not stopping:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()
        if private_dir:
            shutil.rmtree(private_dir, ignore_errors=True)
    return 0


def _status(args: argparse.Namespace) -> int:
    from .admin import Admin
    from .addresses import parse_servers

    rows = []
    context = _client_tls(args)
    for server in parse_servers(args.servers):
        try:
            with Admin(server, timeout=5, ssl=context) as admin:
                for s in admin.status():
                    rows.append((server, s.function, str(s.total - s.running), str(s.running), str(s.workers)))
        except OSError as exc:
            print(f"{server}: cannot connect ({exc})", file=sys.stderr)
            return 1
    header = ("SERVER", "FUNCTION", "QUEUED", "RUNNING", "WORKERS")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.expression)


def _packet_size(text: str) -> str:
    from .limits import max_packet_size

    try:
        max_packet_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _memory_size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_max_packet_size(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--max-packet-size", type=_packet_size, default=None, metavar="SIZE",
                   help=f"largest packet {what}: bytes, or 512M, 2G (default: {MAX_PACKET_ENV}, else the protocol's "
                        f"4G - 1; memory grows as a packet arrives)")


def _add_client_tls(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ssl-ca", default=None, help="TLS: trust job servers whose certificate this CA signed (PEM)")
    p.add_argument("--ssl-cert", default=None, help="TLS: this side's certificate (PEM), for servers that ask for one")
    p.add_argument("--ssl-key", default=None, help="TLS: its private key (PEM), if not in --ssl-cert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gearnb", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gearnb {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("server", help="run a Gearman job server (gearmand-compatible)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; Gearman has no authentication)")
    p.add_argument("-p", "--port", type=int, default=4730)
    _add_max_packet_size(p, "accepted; a larger one is answered ERROR ARGUMENT_TOO_LARGE, the connection kept")
    p.add_argument("--max-memory", type=_memory_size, default=None, metavar="SIZE",
                   help="bound on job data and large packets being received (default: half the RAM); past it, "
                        "large packets wait")
    p.add_argument("--max-connections", type=int, default=None,
                   help="most connections at once (default: the open-files limit, raised to its hard limit, less 32)")
    p.add_argument("--first-packet-timeout", type=float, default=FIRST_PACKET_TIMEOUT, metavar="SECONDS",
                   help="close a connection that sent no complete packet (or finished no TLS handshake) by then "
                        f"(default {FIRST_PACKET_TIMEOUT:g})")
    p.add_argument("--stall-timeout", type=float, default=STALL_TIMEOUT, metavar="SECONDS",
                   help="close a connection that sends no byte of a packet it started, or a slow client holding "
                        f"workers that reads nothing, for this long (default {STALL_TIMEOUT:g})")
    p.add_argument("--job-retries", type=int, default=DEFAULT_JOB_RETRIES,
                   help=f"fail a job after its worker died this many times (default {DEFAULT_JOB_RETRIES}; "
                        "0: requeue it for ever, gearmand's default)")
    p.add_argument("--job-handle-prefix", default=None, help="job handles start with this (default H:<host>)")
    p.add_argument("--exceptions", action="store_true", help="send WORK_EXCEPTION to every client")
    p.add_argument("--can-do-timeout-seconds", action="store_true",
                   help="read CAN_DO_TIMEOUT in seconds, as Perl workers send it (default: milliseconds, as gearmand)")
    p.add_argument("--queue", default=None, metavar="sqlite:PATH",
                   help="keep background jobs in this SQLite file (gearmand's libsqlite3 layout)")
    p.add_argument("--ssl-cert", default=None, help="serve TLS with this certificate (PEM)")
    p.add_argument("--ssl-key", default=None, help="its private key (PEM), if not in --ssl-cert")
    p.add_argument("--ssl-ca", default=None, help="require client certificates signed by this CA")
    p.set_defaults(run=_server)

    p = sub.add_parser("worker", help="run worker processes serving plain Gearman functions")
    p.add_argument("--servers", default=None, help="h1:4730,h2:4730 (default: GEARMAN_SERVERS or 127.0.0.1:4730)")
    p.add_argument("--processes", "-n", type=int, default=1)
    p.add_argument("--import", dest="imports", action="append", default=[],
                   help="module whose register(worker) function (or GEARMAN_FUNCTIONS dict) adds functions")
    p.add_argument("--client-id", default=None)
    p.add_argument("--key-file", default=None, help="cluster key for pyexec (default: GEARNB_KEY)")
    p.add_argument("--job-timeout", type=float, default=None, metavar="SECONDS",
                   help="pyexec's CAN_DO_TIMEOUT: the server gives a job to another worker after this long "
                        "(longer than your longest task; reliable with gearnb's server, not gearmand 1.1.20's)")
    p.add_argument("--no-exception-packets", dest="exception_packets", action="store_false",
                   help="answer a raising function with WORK_WARNING + WORK_FAIL instead of WORK_EXCEPTION "
                        "(for libgearman clients such as PHP's behind gearmand)")
    _add_max_packet_size(p, "taken; a larger job is answered with a failure naming the limit")
    _add_client_tls(p)
    p.set_defaults(run=_worker)

    p = sub.add_parser("local", help="a bundled job server and workers in the foreground, for notebooks to connect to")
    p.add_argument("--workers", "-n", type=int, default=None, help="worker processes (default: one per CPU)")
    p.add_argument("--port", "-p", type=int, default=0, help="job server port (default: a free one)")
    p.add_argument("--import", dest="imports", action="append", default=[])
    p.add_argument("--key-file", default=None,
                   help="the cluster key file: used if it exists, else created with a new key (mode 600); "
                        "default: a private temporary file")
    _add_max_packet_size(p, "of its job server and workers")
    p.set_defaults(run=_local)

    p = sub.add_parser("key", help="cluster keys for pyexec")
    key_sub = p.add_subparsers(dest="key_command", required=True)
    p = key_sub.add_parser("new", help="write a new random cluster key to a new file (mode 600); prints the path")
    p.add_argument("path", help="the key file to create (never overwritten)")
    p.set_defaults(run=_key_new)

    p = sub.add_parser("status", help="print the functions, queued and running jobs and workers of job servers")
    p.add_argument("--servers", default=None)
    _add_client_tls(p)
    p.set_defaults(run=_status)

    p = sub.add_parser("demo", help="start a bundled server and workers and run the calculus example")
    p.add_argument("expression", nargs="*", default=["2+3", "8*7", "9/3", "10-4"])
    p.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .pyexec.keys import BadKey

    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BadKey as exc:  # says how to make a good key
        print(f"gearnb: {exc}", file=sys.stderr)
        return 2
