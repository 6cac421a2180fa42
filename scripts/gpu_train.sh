#!/usr/bin/env bash
# Train several runs at once on one lent GPU for a fixed wall time; each run's weights, log and
# config come back as $OUT/<name>.tar (the device tool returns at most 8 files).
#
# Here (the GPU machine cannot read ../shared/data, so the featurised cache travels, packed):
#   python scripts/pack_cache.py pack cache gpu/cache.npz
#   (wheels of anarcism and gemmi for Python 3.12 in .whl/, see /work/.library/device/README.md)
#   run(command="bash scripts/gpu_train.sh configs/v0.2/gpu-*.yaml", carry=["gpu", ".whl"], timeout_s=570)
# Back here: tar -xf <files_at>/<name>.tar -C runs/, evaluate, ship with scripts/ship_weights.py.
#
# Each config should set fit_epochs_to_minutes (the run sizes its cosine schedule after epoch 1);
# MAX_MINUTES stops any run that overruns (no epoch starts after it); HARD_LIMIT_S kills it.
set -euo pipefail
: "${OUT:?set by the device tool}"
FIT_MINUTES=${FIT_MINUTES:-6.5}
MAX_MINUTES=${MAX_MINUTES:-7}
HARD_LIMIT_S=${HARD_LIMIT_S:-500}  # a run still going after this is stopped, so that the results are packed in time
THREADS=${THREADS:-2}
PACKED=${PACKED:-gpu/cache.npz}
INIT_DIR=${INIT_DIR:-}  # if set, run NAME starts from $INIT_DIR/NAME.safetensors (weights that travel in the tree)
if [ "${WHEELS:-1}" = 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi: training on $(nproc) CPUs"
python3 scripts/pack_cache.py unpack "$PACKED" gpu/cache

names=()
pids=()
for config in "$@"; do
    name=$(basename "$config" .yaml)
    sed -e "s|^cache_dir: .*|cache_dir: gpu/cache|" -e "s|^run_dir: .*|run_dir: gpu/runs|" \
        -e "s|^threads: .*|threads: $THREADS|" -e "s|^fit_epochs_to_minutes: .*|fit_epochs_to_minutes: $FIT_MINUTES|" \
        "$config" > "gpu/$name.yaml"
    if [ -n "$INIT_DIR" ]; then sed -i "s|^init_from: .*|init_from: $INIT_DIR/$name.safetensors|" "gpu/$name.yaml"; fi
    timeout "$HARD_LIMIT_S" python3 -c "
import sys
from immunofold.train.config import TrainConfig
from immunofold.train.loop import train
config = TrainConfig.from_yaml(sys.argv[1])
config.max_minutes = float(sys.argv[2])
train(config)
" "gpu/$name.yaml" "$MAX_MINUTES" > "gpu/$name.out" 2>&1 &
    names+=("$name")
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done

for name in "${names[@]}"; do
    mkdir -p "gpu/runs/$name"
    cp "gpu/$name.out" "gpu/runs/$name/stdout.log"
    tar -cf "$OUT/$name.tar" -C gpu/runs --exclude=last.pt --exclude='*.tmp' "$name"
    echo "== $name: $(grep -c '"epoch"' "gpu/runs/$name/log.jsonl" 2>/dev/null || echo 0) epochs"
    tail -n 2 "gpu/$name.out" | cut -c1-400
done
echo "$failed of ${#names[@]} runs failed"
