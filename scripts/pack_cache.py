"""Pack the featurisation cache into one small compressed file for a GPU machine, and unpack it there.

The device tool carries at most 64 MiB and the machine cannot reach ../shared/data, so the cached
examples travel instead: coordinates as int16 in 0.01 Å steps around each example's centre (error
<= 0.005 Å), integer features as int16, masks as bool, all in one compressed .npz.

    python scripts/pack_cache.py pack cache gpu/cache.npz     # here
    python scripts/pack_cache.py unpack gpu/cache.npz cache   # there: writes cache/examples-<split>.pt
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from immunofold.data.aux import AUX_CACHE_NAME

SPLITS = ("train", "val", AUX_CACHE_NAME)
COORDINATE_STEP = 0.01  # Å


def pack(cache_dir: str, out: str) -> None:
    arrays: dict[str, np.ndarray] = {}
    extras = {}
    for split in SPLITS:
        path = os.path.join(cache_dir, f"examples-{split}.pt")
        if not os.path.exists(path):
            continue
        examples = torch.load(path, weights_only=False)
        tensor_keys = [k for k, v in examples[0].items() if torch.is_tensor(v) and v.dim() > 0]
        lengths = np.array([len(e["restype"]) for e in examples], dtype=np.int32)
        arrays[f"{split}/lengths"] = lengths
        arrays[f"{split}/kind"] = np.array([int(e["kind"]) for e in examples], dtype=np.int8)
        for key in tensor_keys:
            values = torch.cat([e[key] for e in examples])
            if key == "atom14":
                centres = torch.stack([e["atom14"][e["atom_mask"]].mean(0).round() for e in examples])  # [E, 3] Å
                shifted = values - torch.repeat_interleave(centres, torch.from_numpy(lengths).long(), dim=0)[:, None]
                arrays[f"{split}/atom14_centres"] = centres.numpy()
                arrays[f"{split}/atom14"] = torch.round(shifted / COORDINATE_STEP).to(torch.int16).numpy()
            elif values.dtype == torch.bool:
                arrays[f"{split}/{key}"] = values.numpy()
            else:
                arrays[f"{split}/{key}"] = values.to(torch.int16).numpy()
        extras[split] = [{k: v for k, v in e.items() if not torch.is_tensor(v)} for e in examples]
    arrays["extras"] = np.frombuffer(json.dumps(extras).encode(), dtype=np.uint8)
    np.savez_compressed(out, **arrays)
    print(f"{out}: {os.path.getsize(out) / 2**20:.1f} MiB")


def _as_tuples(value):
    """JSON lists back to the tuples the cache holds (sequences, IMGT positions)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def unpack(packed: str, cache_dir: str) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    data = dict(np.load(packed))  # decompress every array once (NpzFile decompresses on each access)
    extras = json.loads(data["extras"].tobytes().decode())
    for split, split_extras in extras.items():
        lengths = data[f"{split}/lengths"]
        starts = np.concatenate([[0], np.cumsum(lengths)])
        keys = [k.split("/", 1)[1] for k in data if k.startswith(split + "/")]
        keys = [k for k in keys if k not in ("lengths", "kind", "atom14_centres")]
        examples = []
        for i, extra in enumerate(split_extras):
            example = {"kind": torch.tensor(int(data[f"{split}/kind"][i]), dtype=torch.long)}
            for key in keys:
                values = torch.from_numpy(data[f"{split}/{key}"][starts[i] : starts[i + 1]].copy())
                if key == "atom14":
                    centre = torch.from_numpy(data[f"{split}/atom14_centres"][i])
                    values = values.float() * COORDINATE_STEP + centre
                elif values.dtype != torch.bool:
                    values = values.long()
                example[key] = values
            example.update({k: _as_tuples(v) for k, v in extra.items()})
            examples.append(example)
        torch.save(examples, os.path.join(cache_dir, f"examples-{split}.pt"))
        print(f"{split}: {len(examples)} examples")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("source")
    parser.add_argument("target")
    args = parser.parse_args()
    (pack if args.action == "pack" else unpack)(args.source, args.target)
