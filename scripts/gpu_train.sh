#!/usr/bin/env bash
# Train ensemble members on a lent GPU for at most 9 minutes, checkpoints to $OUT.
# Run through the device tool from the repo root, carrying the venv-free tree plus `cache` and `runs`:
#   run(command="bash scripts/gpu_train.sh", carry=["cache", "runs"], timeout_s=600)
# then copy $OUT/runs/* back over runs/ and continue on the CPU with `immunofold train --config ...`.
set -euo pipefail
: "${OUT:?set by the device tool}"
MINUTES=${MINUTES:-8}
python3 -m pip install -q torch==2.13.0 2>/dev/null || true
python3 -m pip install -q -e . 2>/dev/null
mkdir -p "$OUT/runs"
cp -r runs/. "$OUT/runs/" 2>/dev/null || true
pids=()
for member in ${MEMBERS:-member0 member1 member2 member3}; do
    sed "s|^run_dir: .*|run_dir: $OUT/runs|; s|^threads: .*|threads: 4|" "configs/$member.yaml" > "/tmp/$member.yaml"
    immunofold train --config "/tmp/$member.yaml" --max-minutes "$MINUTES" > "$OUT/$member.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
rm -f "$OUT"/runs/*/last.pt.tmp
