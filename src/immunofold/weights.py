"""Model weights as safetensors files, with their config and provenance in the file's metadata."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib import resources

from safetensors.torch import load_file, save_file
from torch import nn

from immunofold.constants import KINDS
from immunofold.model.network import ImmunoFoldNet, ModelConfig

PACKAGED_WEIGHTS_DIR = "weights"


def save_weights(model: nn.Module, path: str, info: dict) -> None:
    """Write the model's parameters and buffers to `path` (atomically), with `info` as JSON metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata={"info": json.dumps(info)})
    os.replace(tmp, path)


def load_info(path: str) -> dict:
    """The info metadata of a weights file (config, epoch, val metrics, release, ...), without its tensors."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return json.loads((handle.metadata() or {}).get("info", "{}"))


def load_weights(path: str) -> tuple[dict, dict]:
    """(state dict, info metadata) of a weights file."""
    return load_file(path), load_info(path)


def load_model(path: str) -> tuple[ImmunoFoldNet, dict]:
    """A ready-to-run model (eval mode) from a weights file."""
    state, info = load_weights(path)
    model_config = ModelConfig(**info.get("config", {}).get("model", {}))
    model = ImmunoFoldNet(model_config)
    model.load_state_dict(state)
    model.eval()
    return model, info


MemberSets = dict[str, list[str]]  # receptor kind -> paths of its ensemble members, in order


class WeightsError(ValueError):
    """Weights that cannot be used: no member files, a missing or unreadable one, a malformed members.json.
    str() is one line naming the file or folder and the reason."""


def member_sets(weights: list[str] | MemberSets) -> MemberSets:
    """Every kind's members: a plain list of weight files serves every kind."""
    if isinstance(weights, dict):
        missing = [kind for kind in KINDS if not weights.get(kind)]
        if missing:
            raise WeightsError(f"no ensemble members for {', '.join(missing)}")
        return {kind: list(weights[kind]) for kind in KINDS}
    return {kind: list(weights) for kind in KINDS}


def weights_version(weights: list[str] | MemberSets) -> str:
    """The version predictions report, e.g. 'v0.7+1a2b3c4d5e': the first member's release name (its folder's name
    if it has none) plus the first 10 hex digits of the SHA-256 of all member files, in the order given. When the
    kinds have different members, each kind's name and members are hashed in turn (KINDS order)."""
    sets = member_sets(weights)
    files = tuple((kind, tuple((path, *_file_stamp(path)) for path in sets[kind])) for kind in KINDS)
    return _hashed_version(files)


def _file_stamp(path: str) -> tuple[int, int]:
    """(size, modification time in ns) of a member file: a changed file gets a new stamp, and so is hashed again."""
    try:
        status = os.stat(path)
    except OSError:
        return (-1, -1)  # opening it in _hashed_version raises the real error
    return (status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _hashed_version(files: tuple) -> str:
    """`weights_version` of ((kind, ((path, size, mtime), ...)), ...), hashed once per set of unchanged files (a
    Predictor compares its set's version with the default's; hashing ~30 MB costs ~60 ms)."""
    sets = {kind: [path for path, _, _ in entries] for kind, entries in files}
    shared = all(paths == sets[KINDS[0]] for paths in sets.values())
    digest = hashlib.sha256()
    for kind in KINDS[:1] if shared else KINDS:
        if not shared:
            digest.update(kind.encode())
        for path in sets[kind]:
            with open(path, "rb") as handle:
                digest.update(handle.read())
    first = sets[KINDS[0]][0]
    release = load_info(first).get("release", os.path.basename(os.path.dirname(first)))
    return f"{release}+{digest.hexdigest()[:10]}"


WEIGHTS_ENV = "IMMUNOFOLD_WEIGHTS"  # a folder of members (and optionally MEMBERS_FILE) to use instead of the shipped ones
# In a weights folder, which members each receptor kind uses: {"antibody": [file names], "nanobody": [...], "tcr":
# [...]} (as ImmuneBuilder has a model set per kind): every kind named, each member a file of that folder. Without
# it, every member in the folder serves every kind.
MEMBERS_FILE = "members.json"
# Beside it, the fast member set (`--fast`): fewer, distilled members for antibodies, in the same format.
FAST_MEMBERS_FILE = "members-fast.json"


def _weights_folder() -> str:
    return os.environ.get(WEIGHTS_ENV) or str(resources.files("immunofold") / PACKAGED_WEIGHTS_DIR)


def folder_member_sets(folder: str, manifest_name: str = MEMBERS_FILE) -> MemberSets:
    """Each kind's members in `folder` (paths): as its `manifest_name` file lists them (a file name in the folder per
    member, every kind named), else every *.safetensors file in name order for every kind; {} for a folder with no
    weights, or without the manifest when it is not MEMBERS_FILE (a fast set exists only where a file names it).
    Raises WeightsError for a members file that is unreadable, malformed or names a file the folder lacks."""
    if not os.path.isdir(folder):
        return {}
    manifest = os.path.join(folder, manifest_name)
    if os.path.lexists(manifest):
        return _manifest_member_sets(folder, manifest)
    if manifest_name != MEMBERS_FILE:
        return {}
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors"))
    return member_sets(files) if files else {}


def _manifest_member_sets(folder: str, manifest: str) -> MemberSets:
    """`folder_member_sets` from its MEMBERS_FILE."""
    try:
        with open(manifest) as handle:
            names = json.load(handle)
    except OSError as error:
        raise WeightsError(f"{manifest}: {error.strerror or error}") from None
    except ValueError as error:  # json.JSONDecodeError
        raise WeightsError(f"{manifest}: not JSON ({error})") from None
    if not isinstance(names, dict):
        raise WeightsError(f"{manifest}: not a JSON object of receptor kind -> member file names")
    unknown = sorted(set(names) - set(KINDS))
    if unknown:
        raise WeightsError(f"{manifest}: unknown receptor kind {unknown[0]!r} ({', '.join(KINDS)})")
    sets = {}
    for kind in KINDS:
        members = names.get(kind)
        if not members:
            raise WeightsError(f"{manifest}: no ensemble members for {kind}")
        if not isinstance(members, list) or not all(isinstance(n, str) and n == os.path.basename(n) for n in members):
            raise WeightsError(f"{manifest}: {kind}: expected a list of file names in {folder}")
        sets[kind] = [os.path.join(folder, name) for name in members]
        absent = [name for name, path in zip(members, sets[kind]) if not os.path.isfile(path)]
        if absent:
            raise WeightsError(f"{manifest}: {kind}: {absent[0]} is not a file in {folder}")
    return sets


def packaged_member_sets(fast: bool = False) -> MemberSets:
    """Each kind's members (of the fast set if `fast`): those in $IMMUNOFOLD_WEIGHTS if set, else those shipped in the
    package ({} if none)."""
    return folder_member_sets(_weights_folder(), FAST_MEMBERS_FILE if fast else MEMBERS_FILE)


def required_member_sets(fast: bool = False) -> MemberSets:
    """`packaged_member_sets(fast)`, or a WeightsError naming where it looked if there are none."""
    sets = packaged_member_sets(fast)
    if sets:
        return sets
    if fast:
        raise WeightsError(f"no fast member set ({FAST_MEMBERS_FILE}) in {_weights_folder()}")
    if os.environ.get(WEIGHTS_ENV):
        raise WeightsError(f"no weight files (*.safetensors) in ${WEIGHTS_ENV} = {os.environ[WEIGHTS_ENV]}")
    raise WeightsError(f"no weight files found in the package ({_weights_folder()}); reinstall immunofold")


def packaged_weight_files() -> list[str]:
    """Every member file of `packaged_member_sets()`, once each, in name order ([] if there are none)."""
    return sorted({path for paths in packaged_member_sets().values() for path in paths})
