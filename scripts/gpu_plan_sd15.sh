#!/usr/bin/env bash
# The sd15 GPU plan (issue 18), one prepared run for a GPU machine with a few minutes of time, in order
# of priority (each part has its own time limit; all of `measure` fits about 9 minutes on one H200):
#   1. stage-1 and stage-2 training steps at 512 px, bf16 autocast, gradient checkpointing, AdamW:
#      batch 1 and up to the largest that fits (bench_train_step.py --batch/--clips lists);
#   2. the same with 8-bit AdamW when bitsandbytes imports;
#   3. inference at 512 px, 12-frame clips through ICA, 24 frames: 25 steps with CFG and 10 steps,
#      with and without enable_model_cpu_offload (bench_animate.py --scale sd15);
#   4. the ReferenceNet comparison at 512 px (bench_referencenet.py --device cuda --size 512).
# `rehearse` (a second call, ~10 minutes and ~60 GB of disk): scripts/rehearse_sd15.py --device cuda, the real
# commands at 512 px in bf16 with AdamW.
#
# Run from the repository root:  bash scripts/gpu_plan_sd15.sh [measure|rehearse] [OUT_DIR]
# Needs torch with CUDA, transformers, accelerate, safetensors, psutil, pyyaml, scipy, pillow, imageio, tqdm
# (the GPU image has them) and diffusers, which it lacks: carry its wheel in .whl/ (.whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1
# bitsandbytes (43 MB) does not fit the 64 MiB a call may carry beside this repository, so part 2 reports
# that it is missing unless the machine has it.
set -uo pipefail
PART=${1:-measure}
OUT_DIR=${2:-${OUT:-gpu_plan_out}}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, \
'transformers', transformers.__version__)" | tee -a "$OUT_DIR/gpu.txt" || exit 1

# part NAME SECONDS COMMAND...: run one part with a time limit, keep its whole log, say how it ended.
part() {
    local name=$1 limit=$2
    shift 2
    echo "== $name ($limit s): $*" | tee -a "$OUT_DIR/plan.log"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local code=$?
    grep -v -E "^\s*$|it/s\]|s/it\]" "$OUT_DIR/$name.log" | tail -n 25
    echo "-- $name: exit $code after $((SECONDS - start)) s" | tee -a "$OUT_DIR/plan.log"
}

if [ "$PART" = measure ]; then
    part train_adamw 170 python3 benchmarks/bench_train_step.py --scale sd15 --device cuda --precision bf16 \
        --batch 1,4,8,16,32 --clips 1,2,4,8 --steps 3
    if python3 -c "import bitsandbytes" 2>/dev/null; then
        part train_adamw8bit 120 python3 benchmarks/bench_train_step.py --scale sd15 --device cuda --precision bf16 \
            --optimizer adamw_8bit --batch 1,16,32 --clips 1,8 --steps 3
    else
        echo "-- train_adamw8bit: bitsandbytes is not installed here; 8-bit AdamW not measured" | tee -a "$OUT_DIR/plan.log"
    fi
    for offload in "" --offload; do
        part "infer_25steps_cfg${offload:+_offload}" 70 python3 benchmarks/bench_animate.py --scale sd15 --device cuda \
            --dtype bfloat16 --steps 25 --guidance 2 --frames 24 $offload
        part "infer_10steps${offload:+_offload}" 50 python3 benchmarks/bench_animate.py --scale sd15 --device cuda \
            --dtype bfloat16 --steps 10 --guidance 2 --frames 24 $offload
    done
    part referencenet 150 python3 benchmarks/bench_referencenet.py --device cuda --size 512 --steps 5
elif [ "$PART" = rehearse ]; then
    part rehearse 560 python3 scripts/rehearse_sd15.py --device cuda --root /tmp/sd15_rehearsal \
        --report "$OUT_DIR/rehearsal.json"
else
    echo "unknown part '$PART' (measure or rehearse)" >&2
    exit 2
fi
echo "logs in $OUT_DIR"
