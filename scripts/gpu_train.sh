#!/usr/bin/env bash
# Train several runs at once on one lent GPU for a fixed wall time; each argument's weights, logs and
# configs come back as $OUT/<name>.tar (the device tool returns at most 8 files).
#
# An argument is a config, or a chain of configs joined by '+' that run one after the other in one process
# (a later stage whose init_from names an earlier stage's runs/<release>/<name>/best.safetensors starts from it).
#
# Here (the GPU machine cannot read ../shared/data, so the featurised cache travels, packed):
#   python scripts/pack_cache.py pack cache gpu/cache.npz
#   (wheels of anarcism and gemmi for Python 3.12 in .whl/, see /work/.library/device/README.md)
#   run(command="bash scripts/gpu_train.sh configs/experiments/v0.7/a.yaml+configs/experiments/v0.7/a-p2.yaml configs/experiments/v0.7/b.yaml",
#       carry=["gpu", ".whl"], timeout_s=570)
# Back here: tar -xf <files_at>/<name>.tar -C runs/<release>/, evaluate, ship with scripts/ship_weights.py.
# KEEP_LAST=1 brings each run's last.pt back too (as <name>.tar.part00, 01, ...: cat them | tar -x), so that a run
# cut short there continues here with `immunofold train --config ...`.
#
# A config may set fit_epochs_to_minutes (the run sizes its cosine schedule after epoch 1); MAX_MINUTES is each
# argument's deadline (no epoch starts after it); HARD_LIMIT_S kills a process still going, so that results are packed in time.
# An init_from that is not an earlier stage's is read from $INIT_DIR/<name>.safetensors (a float16 copy that travels).
set -euo pipefail
: "${OUT:?set by the device tool}"
MAX_MINUTES=${MAX_MINUTES:-7}
HARD_LIMIT_S=${HARD_LIMIT_S:-500}
THREADS=${THREADS:-2}
PACKED=${PACKED:-gpu/cache.npz}
INIT_DIR=${INIT_DIR:-gpu/init}
if [ "${WHEELS:-1}" = 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi: training on $(nproc) CPUs"
python3 scripts/pack_cache.py unpack "$PACKED" gpu/cache

names=()
pids=()
for chain in "$@"; do
    IFS=+ read -r -a configs <<< "$chain"
    name=$(basename "${configs[0]}" .yaml)
    timeout "$HARD_LIMIT_S" python3 - "$MAX_MINUTES" "$THREADS" "$INIT_DIR" "${configs[@]}" > "gpu/$name.out" 2>&1 <<'PY' &
import os, sys, time
from immunofold.train.config import TrainConfig
from immunofold.train.loop import train

max_minutes, threads, init_dir, paths = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
deadline = time.time() + max_minutes * 60
earlier = {}  # best.safetensors of this chain's stages, by the path a config names them with here
for path in paths:
    config = TrainConfig.from_yaml(path)
    here = os.path.join(config.run_dir, config.name, "best.safetensors")
    config.cache_dir, config.run_dir, config.threads = "gpu/cache", "gpu/runs", threads
    if config.init_from:
        config.init_from = earlier.get(config.init_from, os.path.join(init_dir, f"{config.name}.safetensors"))
    config.max_minutes = (deadline - time.time()) / 60
    if config.max_minutes <= 0:
        print(f"{config.name}: no time left, not started")
        break
    train(config)
    earlier[here] = os.path.join(config.run_dir, config.name, "best.safetensors")
PY
    names+=("$name")
    pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done

for i in "${!names[@]}"; do
    name=${names[$i]}
    IFS=+ read -r -a configs <<< "${@:$((i + 1)):1}"
    stages=()
    for config in "${configs[@]}"; do
        stage=$(basename "$config" .yaml)
        if [ -d "gpu/runs/$stage" ]; then
            stages+=("$stage")
            echo "== $stage: $(grep -c '"epoch"' "gpu/runs/$stage/log.jsonl" 2>/dev/null || echo 0) epochs"
        fi
    done
    if [ ${#stages[@]} -eq 0 ]; then echo "== $name: nothing trained"; tail -n 3 "gpu/$name.out"; continue; fi
    for stage in "${stages[@]:0:${#stages[@]}-1}"; do  # earlier stages travel as float16, so that all files fit
        python3 scripts/float16_weights.py "gpu/runs/$stage/best.safetensors" "gpu/runs/$stage/best.safetensors"
    done
    cp "gpu/$name.out" "gpu/runs/$name.stdout.log" 2>/dev/null || true
    if [ "${KEEP_LAST:-0}" = 1 ]; then  # resumable here: checkpoints come back too, in parts of at most 15 MB
        tar -cf - -C gpu/runs --exclude='*.tmp' "${stages[@]}" "$name.stdout.log" | split -b 15M -d - "$OUT/$name.tar.part"
    else
        tar -cf "$OUT/$name.tar" -C gpu/runs --exclude=last.pt --exclude='*.tmp' "${stages[@]}" "$name.stdout.log"
    fi
    tail -n 2 "gpu/$name.out" | cut -c1-400
done
echo "$failed of ${#names[@]} processes failed"
