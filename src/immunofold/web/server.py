"""`immunofold serve`: the command that starts the local web page (the app itself is `app.create_app`).

Binds to 127.0.0.1 by default, where no token is needed (anyone on this machine can use the page and
list every job). Any other `--host` prints a warning, requires an API token (`--token`, else
$IMMUNOFOLD_TOKEN, else one generated and printed) and keeps the Host-header check: the names served
are loopback, the bound address and each `--allowed-host`.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import secrets
import socket
import sys

from immunofold.web import assets as web_assets
from immunofold.web.security import LOOPBACK_HOSTS, host_name, is_loopback

TOKEN_ENV = "IMMUNOFOLD_TOKEN"
TOKEN_PATTERN = r"[A-Za-z0-9._~-]{16,200}"  # safe in a URL, a cookie and a header
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def served_hosts(host: str, extra: list[str]) -> list[str]:
    """Host header names the server answers: loopback, the bound address (unless a wildcard) and `extra`."""
    names = [*LOOPBACK_HOSTS, *(host_name(name) for name in extra)]
    if host_name(host) not in WILDCARD_ADDRESSES:
        names.append(host_name(host))
    return list(dict.fromkeys(names))


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    if args.install_assets:
        try:
            path = web_assets.install_assets()
        except Exception as exc:  # noqa: BLE001
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"installed {path}")
        return 0
    if any(name.strip() in ("*", "") for name in args.allowed_host):
        return _fail("--allowed-host takes a host name (e.g. myserver.lab.example); the Host check cannot be turned off")
    loopback = is_loopback(args.host)
    token = args.token or os.environ.get(TOKEN_ENV) or (None if loopback else secrets.token_urlsafe(24))
    if token is not None and not re.fullmatch(TOKEN_PATTERN, token):
        return _fail("the token must be 16-200 characters of A-Z a-z 0-9 . _ ~ -")
    port, problem = _listening_port(args.host, args.port)
    if problem:
        return _fail(problem)
    hosts = served_hosts(args.host, args.allowed_host)
    if not loopback:
        print(
            f"warning: --host {args.host} makes the server reachable from other machines, over plain HTTP "
            "(put a TLS reverse proxy in front for anything but a trusted network). Every API call needs the "
            f"token; Host headers served: {', '.join(hosts)} (add names with --allowed-host).",
            file=sys.stderr,
        )
        if all(is_loopback(name) for name in hosts):
            print(
                "warning: no --allowed-host given: other machines are refused (400) until they use a name "
                "given with --allowed-host NAME (the machine's DNS name or IP address)",
                file=sys.stderr,
            )
    if web_assets.find_viewer() is None:
        print(
            f"warning: the 3D viewer is not installed; run `{web_assets.INSTALL_COMMAND}` (the page shows how)",
            file=sys.stderr,
        )
    import uvicorn

    from immunofold.web.jobs import StoreUnavailable
    from immunofold.web.app import create_app
    from immunofold.weights import WeightsError, required_member_sets

    try:  # unusable weights would fail every job: refuse to start instead
        required_member_sets()
    except WeightsError as exc:
        return _fail(f"weights: {exc}")
    from immunofold.web.jobs import claim_database, default_db_path

    try:  # one server per job database: a second would resume (re-run) the first one's jobs
        lock = claim_database(args.db or default_db_path())
    except StoreUnavailable as exc:
        return _fail(str(exc))
    with lock:  # released only once no job thread runs (the runner's shutdown waits for them)
        try:
            app = create_app(db_path=args.db, workers=args.workers, allowed_hosts=hosts, api_token=token, preload=True)
        except StoreUnavailable as exc:
            return _fail(str(exc))
        shown_host = next((h for h in hosts if h not in LOOPBACK_HOSTS), hosts[0]) if not loopback else args.host
        shown_host = f"[{shown_host}]" if ":" in shown_host else shown_host
        query = f"?token={token}" if token else ""
        print(f"immunofold: http://{shown_host}:{port}/{query}  (jobs in {app.state.store.path})", flush=True)
        try:
            uvicorn.run(app, host=args.host, port=port, log_level=args.log_level)
        finally:
            app.state.runner.shutdown()  # also when uvicorn stopped without its lifespan shutdown
    return 0


def _listening_port(host: str, port: int) -> tuple[int, str]:
    """(the port the server will listen on, "") or (port, why it cannot listen on host:port, one line). Port 0: a free
    port chosen here, so that the address printed is the one served."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
            port = probe.getsockname()[1]
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return port, f"port {port} on {host} is in use (another server?); choose another with --port"
        return port, f"cannot listen on {host}:{port}: {error.strerror or error}"
    return port, ""


def _port(text: str) -> int:
    """A TCP port number from the command line (0-65535; 0: any free port), else argparse's one-line error."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return port


def add_serve_parser(commands) -> None:
    """Register `immunofold serve`."""
    serve = commands.add_parser("serve", help="run the local web page (paste sequences, see the structure)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host header name to serve besides loopback and --host (repeatable), e.g. the machine's DNS name",
    )
    serve.add_argument(
        "--token",
        default=None,
        help=f"API token every call must carry (default off loopback: ${TOKEN_ENV}, else generated and printed)",
    )
    serve.add_argument("--db", default=None, help="SQLite job database (default ~/.local/share/immunofold/jobs.sqlite)")
    serve.add_argument("--workers", type=int, default=1, help="single predictions run at once (default 1; batches get their own worker)")
    serve.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    serve.add_argument(
        "--install-assets",
        action="store_true",
        help=f"install the 3D viewer (npm install 3dmol@{web_assets.THREEDMOL_VERSION}) and exit",
    )
    serve.set_defaults(handler=_serve)
