#!/usr/bin/env bash
# Build a separate venv for IgFold 1.0.1, the third method of benchmarks/accuracy.py and speed.py.
#
#     bash scripts/setup_igfold.sh                # -> .venv-igfold/ (about 1.5 GB, a few minutes)
#     VENV=/path/to/venv PYTHON=python3.11 bash scripts/setup_igfold.sh
#
# IgFold cannot live in the project venv: it needs antiberty>=1.0.0, and our `test`/`language` extras pin
# antiberty==0.1.3 (transformers<5). It runs offline: the igfold wheel ships its 4 models, and antiberty 1.0.0
# loads the same AntiBERTy model that antiberty 0.1.3's wheel ships (1.0.0 would download it), unpacked here
# into $VENV/antiberty_weights. benchmarks/peers/igfold_runner.py points ANTIBERTY_WEIGHTS_DIR there.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv-igfold}"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"   # the project venv's torch; any torch>=2.0 works for IgFold

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "IgFold 1.0.1 needs Python >= 3.11 ($PYTHON is $("$PYTHON" -V 2>&1)); set PYTHON=" >&2; exit 2; }

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q "$TORCH"

WHEELS="$VENV/wheels"
mkdir -p "$WHEELS"
# One `pip download` per requirement: antiberty is wanted at two versions.
for requirement in igfold==1.0.1 antiberty==1.0.0 antiberty==0.1.3; do
    "${PIP[@]}" download -q --no-deps -d "$WHEELS" "$requirement"
done
"${PIP[@]}" install -q "$WHEELS/igfold-1.0.1-py3-none-any.whl" "$WHEELS/antiberty-1.0.0-py3-none-any.whl"

WEIGHTS="$VENV/antiberty_weights"
rm -rf "$WEIGHTS"
"$VENV/bin/python" - "$WHEELS/antiberty-0.1.3-py3-none-any.whl" "$WEIGHTS" <<'EOF'
"""Unpack antiberty 0.1.3's AntiBERTy_md_smooth model (config.json, pytorch_model.bin) into a folder."""
import os, sys, zipfile

wheel, target = sys.argv[1:]
prefix = "antiberty/trained_models/AntiBERTy_md_smooth/"
os.makedirs(target)
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            with open(os.path.join(target, os.path.basename(name)), "wb") as handle:
                handle.write(archive.read(name))
EOF
rm -f "$WHEELS/antiberty-0.1.3-py3-none-any.whl"  # 97 MB; its model is unpacked above

# Smoke test: load IgFold's 4 models and AntiBERTy offline, fold the trastuzumab heavy chain.
ANTIBERTY_WEIGHTS_DIR="$WEIGHTS" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/python" - <<'EOF'
from igfold import IgFoldRunner

runner = IgFoldRunner(device="cpu", verbose=False)
out = runner.predict([{"H": "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS"}])
assert out[0].coords.shape[1] == 120, out[0].coords.shape
print(f"IgFold ready: {runner.num_models} models, AntiBERTy offline")
EOF
echo "benchmarks use it by default ($VENV/bin/python), or pass --igfold-python $VENV/bin/python"
