"""Copy a weights file with its floating-point tensors rounded to float16 (half the size; metadata kept).

For trips to a lent GPU, whose tree and returned files are size-limited: starting weights travel this way,
and earlier stages of a chained run come back this way. The model loads them as float32 again.

    python scripts/float16_weights.py runs/v0.7/pair-d6/best.safetensors gpu/init/p2-pair-d6.safetensors
"""

from __future__ import annotations

import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def main(source: str, destination: str) -> None:
    with safe_open(source, "pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    half = {key: t.half() if t.is_floating_point() else t for key, t in tensors.items()}
    save_file(half, destination, metadata=metadata)


if __name__ == "__main__":
    main(*sys.argv[1:3])
