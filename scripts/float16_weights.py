"""Copy a weights file with its floating-point tensors rounded to float16 (half the size; metadata kept).

For trips to a lent GPU, whose tree and returned files are size-limited: starting weights travel this way,
and earlier stages of a chained run come back this way. The model loads them as float32 again.

    python scripts/float16_weights.py runs/v0.7/pair-d6/best.safetensors gpu/init/p2-pair-d6.safetensors
"""

from __future__ import annotations

import json
import sys

from safetensors.torch import save_file

from immunofold.weights import load_weights


def main(source: str, destination: str) -> None:
    tensors, info = load_weights(source)
    half = {key: t.half() if t.is_floating_point() else t for key, t in tensors.items()}
    save_file(half, destination, metadata={"info": json.dumps(info)})


if __name__ == "__main__":
    main(*sys.argv[1:3])
