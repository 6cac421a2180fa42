"""The 3D viewer (3Dmol.js): installed from the npm registry at install time, served by the app.

`immunofold serve --install-assets` runs `npm install 3dmol@<pinned>` into a folder outside git
(`src/immunofold/web/vendor/`, gitignored, or the user's data folder when the package folder is
read-only, or `$IMMUNOFOLD_WEB_ASSETS`). The server never loads it from a CDN.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

THREEDMOL_PACKAGE = "3dmol"
THREEDMOL_VERSION = "2.5.5"  # pinned; BSD-3-Clause
VIEWER_FILE = Path("node_modules") / "3dmol" / "build" / "3Dmol-min.js"
ASSETS_ENV = "IMMUNOFOLD_WEB_ASSETS"
INSTALL_COMMAND = "immunofold serve --install-assets"


def user_data_dir() -> Path:
    """$XDG_DATA_HOME/immunofold, else ~/.local/share/immunofold."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "immunofold"


def candidate_dirs() -> list[Path]:
    """Where the assets may live, in the order they are looked for."""
    if os.environ.get(ASSETS_ENV):
        return [Path(os.environ[ASSETS_ENV])]
    return [Path(__file__).resolve().parent / "vendor", user_data_dir() / "web-assets"]


def find_viewer() -> Path | None:
    """Path of 3Dmol-min.js, or None when the assets are not installed."""
    for folder in candidate_dirs():
        path = folder / VIEWER_FILE
        if path.is_file():
            return path
    return None


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


def install_assets(target: Path | None = None, log=print) -> Path:
    """`npm install` the pinned 3Dmol.js into `target` (default: first writable candidate); returns the file."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: install Node.js and npm (e.g. `apt-get install -y nodejs npm`) and rerun")
    if target is None:
        target = next((d for d in candidate_dirs() if _writable(d)), None)
        if target is None:
            raise RuntimeError(f"no writable folder for the web assets; set {ASSETS_ENV} to one")
    target.mkdir(parents=True, exist_ok=True)
    package_json = target / "package.json"
    if not package_json.exists():
        package_json.write_text('{"name": "immunofold-web-assets", "private": true}\n')
    spec = f"{THREEDMOL_PACKAGE}@{THREEDMOL_VERSION}"
    log(f"npm install {spec} into {target}")
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--save-exact", "--prefix", str(target), spec],
        check=True,
    )
    path = target / VIEWER_FILE
    if not path.is_file():
        raise RuntimeError(f"npm finished but {path} is missing")
    return path
