"""Model weights as safetensors files, with their config and provenance in the file's metadata."""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources

from safetensors.torch import load_file, save_file
from torch import nn

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


def weights_version(weight_files: list[str]) -> str:
    """The version predictions report, e.g. 'v0.7+1a2b3c4d5e': the first member's release name (its folder's name
    if it has none) plus the first 10 hex digits of the SHA-256 of all member files, in the order given."""
    digest = hashlib.sha256()
    for path in weight_files:
        with open(path, "rb") as handle:
            digest.update(handle.read())
    release = load_info(weight_files[0]).get("release", os.path.basename(os.path.dirname(weight_files[0])))
    return f"{release}+{digest.hexdigest()[:10]}"


WEIGHTS_ENV = "IMMUNOFOLD_WEIGHTS"  # a folder of *.safetensors members to use instead of the shipped ones


def packaged_weight_files() -> list[str]:
    """Paths of the ensemble members, in name order: $IMMUNOFOLD_WEIGHTS if set, else those shipped in the package."""
    folder = os.environ.get(WEIGHTS_ENV) or str(resources.files("immunofold") / PACKAGED_WEIGHTS_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors"))
