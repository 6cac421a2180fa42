"""`immunofold serve`: a local web page — paste sequences, see the structure coloured by its error.

FastAPI app served by uvicorn on 127.0.0.1 by default. Jobs persist in SQLite (see `jobs.py`); the
3D viewer (3Dmol.js) is installed from npm by `immunofold serve --install-assets` (see `assets.py`).

Endpoints (JSON unless noted):
    GET  /                          the page (an error page if 3Dmol.js is not installed)
    GET  /static/{file}             the page's own JS/CSS
    GET  /vendor/3Dmol-min.js       the installed viewer
    GET  /api/health                {"status", "viewer_installed", "batch_available", ...}
    POST /api/predict               {kind, name, heavy, light, alpha, beta, fasta, refine} -> 202 {id}
    POST /api/batch                 multipart: file (FASTA/CSV), kind, refine -> 202 {id}
    GET  /api/jobs                  recent jobs
    GET  /api/jobs/{id}             status, stage, progress, result
    GET  /api/jobs/{id}/model.pdb   the model (B-factor = predicted error, Å)
    GET  /api/jobs/{id}/model.cif
    GET  /api/jobs/{id}/results.zip batch results: structures + summary.csv + failures.csv
Errors: {"detail": "<one line>", "field": "<form field or null>"} with 4xx status.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from immunofold.web import assets as web_assets

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_SINGLE_BYTES = 1 * 1024 * 1024  # a single prediction request
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a batch upload
MAX_SEQUENCE_CHARS = 10_000  # per chain field, before cleaning (the model refuses > 5000 residues anyway)
MAX_NAME_CHARS = 80
UPLOAD_SUFFIXES = (".fasta", ".fa", ".faa", ".fas", ".fna", ".seq", ".fsa", ".csv", ".tsv", ".tab", ".txt")  # as immunofold.inputs
KINDS = ("antibody", "nanobody", "tcr")
SLOTS = {"antibody": ("heavy", "light"), "nanobody": ("heavy",), "tcr": ("alpha", "beta")}
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

MISSING_VIEWER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>immunofold: viewer not installed</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>The 3D viewer is not installed</h1>
<p>immunofold serves the 3Dmol.js viewer itself (it is never loaded from the internet), and it has
not been installed yet. Stop the server and run:</p>
<pre>immunofold serve --install-assets</pre>
<p>(it runs <code>npm install 3dmol@{version}</code> into a folder outside the git checkout), then start
<code>immunofold serve</code> again. The JSON API under <code>/api/</code> works without it.</p>
</body></html>
"""


# --- input handling -------------------------------------------------------------------------
def clean_name(name: str | None, fallback: str = "model") -> str:
    """A one-line display name: control characters and runs of whitespace collapsed, length capped."""
    name = re.sub(r"[\x00-\x1f\x7f\s]+", " ", name or "").strip()[:MAX_NAME_CHARS]
    return name or fallback


def download_stem(name: str) -> str:
    """A safe file name stem for Content-Disposition (the server never writes it to disk)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60] or "model"


def parse_fasta(text: str) -> list[tuple[str, str]]:
    """(header, sequence) records; text without '>' is one record with an empty header."""
    records: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            records.append((line[1:].strip(), []))
        else:
            if not records:
                records.append(("", []))
            records[-1][1].append(line)
    return [(header, "".join(parts)) for header, parts in records]


def chains_from_fasta(kind: str, text: str, name: str) -> dict[str, str]:
    """Assign FASTA records to the chain slots of `kind`: by chain type when it is clear, else in order."""
    from immunofold.sequences import KIND_SLOTS, InputError, clean_sequence, find_domains

    slots = SLOTS[kind]
    records = parse_fasta(text)
    if not records:
        raise InputError(name, "no sequences found in the FASTA")
    if len(records) != len(slots):
        raise InputError(
            name, f"a {kind} needs {len(slots)} FASTA record(s) ({' + '.join(slots)}), found {len(records)}"
        )
    if len(slots) == 1:
        return {slots[0]: records[0][1]}
    allowed = dict(KIND_SLOTS[kind])
    assigned: dict[str, str] = {}
    for i, (header, sequence) in enumerate(records):
        record = f"{name} FASTA record {i + 1}" + (f" ({clean_name(header, '')[:40]})" if header else "")
        domains = find_domains(clean_sequence(sequence, record), record)
        chain_class = domains[0].chain_class if domains else None
        slot = next((s for s in slots if chain_class in allowed[s] and s not in assigned), None)
        if slot is None:
            return dict(zip(slots, (seq for _, seq in records)))
        assigned[slot] = sequence
    return assigned


def input_error_field(error, name: str, from_fasta: bool) -> str | None:
    """Which form field an InputError concerns (None: the form as a whole)."""
    if from_fasta:
        return "fasta"
    for slot in ("heavy", "light", "alpha", "beta"):
        if error.record == f"{name} {slot} chain" or error.reason.startswith(f"missing {slot} chain"):
            return slot
    if error.reason.startswith("unknown receptor kind"):
        return "kind"
    if error.reason.startswith("unexpected chain"):
        return "kind"
    return None


def create_app(*args, **kwargs):
    """The FastAPI app (see `immunofold.web.server.create_app`)."""
    from immunofold.web.server import create_app as _create_app

    return _create_app(*args, **kwargs)


# --- command line ---------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    if args.install_assets:
        try:
            path = web_assets.install_assets()
        except Exception as exc:  # noqa: BLE001
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"installed {path}")
        return 0
    import uvicorn

    if web_assets.find_viewer() is None:
        print(
            f"warning: the 3D viewer is not installed; run `{web_assets.INSTALL_COMMAND}` (the page shows how)",
            file=sys.stderr,
        )
    allowed = list(LOOPBACK_HOSTS) if args.host in ("127.0.0.1", "localhost", "::1") else None
    from immunofold.web.server import create_app

    app = create_app(db_path=args.db, workers=args.workers, allowed_hosts=allowed, preload=True)
    print(f"immunofold: http://{args.host}:{args.port}/  (jobs in {app.state.store.path})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_serve_parser(commands) -> None:
    """Register `immunofold serve`."""
    serve = commands.add_parser("serve", help="run the local web page (paste sequences, see the structure)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--db", default=None, help="SQLite job database (default ~/.local/share/immunofold/jobs.sqlite)")
    serve.add_argument("--workers", type=int, default=1, help="jobs run at once (default 1; they share one model)")
    serve.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    serve.add_argument(
        "--install-assets",
        action="store_true",
        help=f"install the 3D viewer (npm install 3dmol@{web_assets.THREEDMOL_VERSION}) and exit",
    )
    serve.set_defaults(handler=_serve)
