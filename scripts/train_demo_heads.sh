#!/usr/bin/env bash
# Reproduce the shipped demo heads (medusa/demo_heads/) for SmolLM2-135M-Instruct on one GPU.
#
#   scripts/train_demo_heads.sh BASE_DIR PROMPTS_JSONL WORK_DIR [NUM_PROMPTS] [stage...]
#
# The shipped heads (v5): DATA_BATCH=256 DATA_SHARDS=2 ... 17453 data, stopped by an out-of-memory error
# and resumed with DATA_BATCH=160 until the next one: 8,802 + 200 conversations. Then
# CONFIGS=shared_lm_head:3:3 EPOCHS=3 BATCH=32 ... train eval (benchmarks/RESULTS.md, the shipped heads v5).
# The shipped heads v5 predate two fixes of the data stage: replies were cut at 512 tokens and the
# development prompts (benchmarks/data/dev_prompts.jsonl) were not held out. Both hold now.
# stages: data (self-distil answers to NUM_PROMPTS prompts sampled with seed 0, the development prompts
# held out, replies up to DATA_MAX_NEW_TOKENS (1024) tokens), train (own vs shared
# lm_head, 3 and 5 heads), eval (head accuracy and simulated tokens/step on MT-bench first turns).
# Default: all three. Each training run writes WORK_DIR/heads_<type>_<n>/ with training_summary.json;
# eval writes WORK_DIR/eval_<type>_<n>.json.
# Environment:
#   CONFIGS         type:heads[:layers[:distillation]] list; layers default to 1, distillation α to 0
#                   (shared_lm_head:3:2 writes heads_shared_lm_head_3_l2, shared_lm_head:3:1:0.5
#                   heads_shared_lm_head_3_kd0.5)
#   EPOCHS (2), BATCH (per-device batch, 16)
#   TRAIN_PARALLEL  1: train every config at once, each logging to WORK_DIR/train_<name>.log; they
#                   need the memory of all at once (at BATCH=32 one run held up to 98 GB of an H200)
#   DATA_BATCH      decoding batch of the data stage (128)
#   DATA_MAX_NEW_TOKENS  longest reply of the data stage (1024, data generation's default)
#   DATA_SHARDS     generating processes sharing the GPU (1)
#   DATA_TIMEOUT    seconds of data generation, then stop cleanly and keep what is written; a rerun
#                   with the same DATA_SHARDS resumes
#   COST_CURVE      a python -m medusa.eval.verify_cost curve: eval also picks the tree size from it
set -euo pipefail
BASE=$1 PROMPTS=$2 WORK=$3 N=${4:-3000}
shift $(( $# < 4 ? $# : 4 ))
STAGES=${*:-data train eval}
mkdir -p "$WORK"
cd "$(dirname "$0")/.."

if [[ " $STAGES " == *" data "* ]]; then
  python3 - "$PROMPTS" "$N" "$WORK/prompts.jsonl" <<'PY'
import random, sys
lines = [line for line in open(sys.argv[1]).read().split("\n") if line]  # not splitlines(): JSON strings may hold U+2028
random.Random(0).shuffle(lines)
open(sys.argv[3], "w").write("\n".join(lines[: int(sys.argv[2])]) + "\n")
PY
  # DATA_SHARDS processes share the GPU, each on every DATA_SHARDS-th prompt: one process leaves it
  # idle while its host side reads each step's tokens back.
  shards=${DATA_SHARDS:-1}
  for ((i = 0; i < shards; i++)); do
    awk -v n="$shards" -v i="$i" 'NR % n == i' "$WORK/prompts.jsonl" > "$WORK/prompts.$i.jsonl"
    timeout --preserve-status -s INT "${DATA_TIMEOUT:-0}" python3 -m data_generation.generate --model "$BASE" \
        --input "$WORK/prompts.$i.jsonl" --output "$WORK/distilled.$i.jsonl" --max-new-tokens ${DATA_MAX_NEW_TOKENS:-1024} \
        --exclude benchmarks/data/dev_prompts.jsonl --batch-size ${DATA_BATCH:-128} --dtype bfloat16 &
  done
  for ((i = 0; i < shards; i++)); do wait -n || [[ $? == 130 ]]; done
  python3 - "$WORK" "$shards" <<'PY'
import random, sys
lines = []
for i in range(int(sys.argv[2])):  # written in the order replies finish: shuffle first
    lines += open(f"{sys.argv[1]}/distilled.{i}.jsonl").read().split("\n")[:-1]
random.Random(0).shuffle(lines)
open(f"{sys.argv[1]}/train.jsonl", "w").write("\n".join(lines[200:]) + "\n")
open(f"{sys.argv[1]}/eval.jsonl", "w").write("\n".join(lines[:200]) + "\n")
PY
fi

names=() pids=()
for config in ${CONFIGS:-shared_lm_head:3 shared_lm_head:5 own_lm_head:3 own_lm_head:5}; do
  IFS=: read -r type heads layers distill <<< "$config"
  layers=${layers:-1} distill=${distill:-0} name=${type}_${heads}
  [[ $layers == 1 ]] || name+=_l$layers
  [[ $distill == 0 ]] || name+=_kd$distill
  names+=("$name")
  if [[ " $STAGES " == *" train "* ]]; then
    # TRAIN_PARALLEL=1 trains every config at once on the one GPU: a 135M model's training steps are
    # too small to keep it busy alone.
    python3 medusa/train/train_legacy.py --model_name_or_path "$BASE" \
        --data_path "$WORK/train.jsonl" --eval_data_path "$WORK/eval.jsonl" --bf16 True \
        --output_dir "$WORK/heads_${name}" --num_train_epochs ${EPOCHS:-2} \
        --per_device_train_batch_size ${BATCH:-16} --per_device_eval_batch_size ${BATCH:-16} --gradient_accumulation_steps 1 \
        --learning_rate 1e-3 --weight_decay 0.0 --warmup_ratio 0.1 --lr_scheduler_type cosine \
        --logging_steps 50 --save_strategy no --eval_strategy no --model_max_length 1024 \
        --medusa_num_heads "$heads" --medusa_num_layers "$layers" --medusa_head_type "$type" \
        --medusa_distillation "$distill" \
        --dataloader_num_workers 2 --report_to none > >(tee "$WORK/train_${name}.log") 2>&1 &
    if [[ ${TRAIN_PARALLEL:-0} == 1 ]]; then pids+=($!); else wait $!; fi
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done  # a failed run stops the script before its evaluation
if [[ " $STAGES " == *" eval "* ]]; then
  for name in "${names[@]}"; do
    python3 -m medusa.eval.heads_accuracy --model "$WORK/heads_${name}" --base-model "$BASE" \
        --max-new-tokens 256 --batch-size 80 --build-tree 63 ${COST_CURVE:+--cost-curve "$COST_CURVE"} \
        --tree-output "$WORK/tree_${name}.json" --output "$WORK/eval_${name}.json"
  done
fi
