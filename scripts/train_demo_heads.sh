#!/usr/bin/env bash
# Reproduce the shipped demo heads (medusa/demo_heads/) for SmolLM2-135M-Instruct on one GPU.
#
#   scripts/train_demo_heads.sh BASE_DIR PROMPTS_JSONL WORK_DIR [NUM_PROMPTS] [stage...]
#
# The shipped heads (v4): DATA_BATCH=256 DATA_TIMEOUT=420 ... 17453 data, which kept 3,896 + 200
# conversations, then CONFIGS=shared_lm_head:3:2 EPOCHS=3 ... train eval (benchmarks/RESULTS.md).
# stages: data (self-distil answers to NUM_PROMPTS prompts sampled with seed 0), train (own vs shared
# lm_head, 3 and 5 heads), eval (head accuracy and simulated tokens/step on MT-bench first turns).
# Default: all three. Each training run writes WORK_DIR/heads_<type>_<n>/ with training_summary.json;
# eval writes WORK_DIR/eval_<type>_<n>.json.
# Environment: CONFIGS (type:heads[:layers[:distillation]] list; layers default to 1, distillation α to 0;
# shared_lm_head:3:2 writes heads_shared_lm_head_3_l2, shared_lm_head:3:1:0.5 heads_shared_lm_head_3_kd0.5), EPOCHS (2), BATCH (per-device batch, 16), DATA_BATCH (decoding
# batch of the data stage, 128), DATA_TIMEOUT (seconds of data generation, then stop cleanly and keep
# what is written; a rerun resumes), COST_CURVE (a benchmarks/verify_cost.py curve: eval also picks the
# tree size from it).
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
  timeout --preserve-status -s INT "${DATA_TIMEOUT:-0}" python3 data_generation/generate.py --model "$BASE" --input "$WORK/prompts.jsonl" \
      --output "$WORK/distilled.jsonl" --max-new-tokens 512 --batch-size ${DATA_BATCH:-128} --dtype bfloat16 || [[ $? == 130 ]]
  python3 - "$WORK" <<'PY'
import random, sys
lines = open(f"{sys.argv[1]}/distilled.jsonl").read().split("\n")[:-1]  # written by prompt length: shuffle first
random.Random(0).shuffle(lines)
open(f"{sys.argv[1]}/train.jsonl", "w").write("\n".join(lines[200:]) + "\n")
open(f"{sys.argv[1]}/eval.jsonl", "w").write("\n".join(lines[:200]) + "\n")
PY
fi

for config in ${CONFIGS:-shared_lm_head:3 shared_lm_head:5 own_lm_head:3 own_lm_head:5}; do
  IFS=: read -r type heads layers distill <<< "$config"
  layers=${layers:-1} distill=${distill:-0} name=${type}_${heads}
  [[ $layers == 1 ]] || name+=_l$layers
  [[ $distill == 0 ]] || name+=_kd$distill
  if [[ " $STAGES " == *" train "* ]]; then
    python3 medusa/train/train_legacy.py --model_name_or_path "$BASE" \
        --data_path "$WORK/train.jsonl" --eval_data_path "$WORK/eval.jsonl" --bf16 True \
        --output_dir "$WORK/heads_${name}" --num_train_epochs ${EPOCHS:-2} \
        --per_device_train_batch_size ${BATCH:-16} --per_device_eval_batch_size ${BATCH:-16} --gradient_accumulation_steps 1 \
        --learning_rate 1e-3 --weight_decay 0.0 --warmup_ratio 0.1 --lr_scheduler_type cosine \
        --logging_steps 50 --save_strategy no --eval_strategy no --model_max_length 1024 \
        --medusa_num_heads "$heads" --medusa_num_layers "$layers" --medusa_head_type "$type" \
        --medusa_distillation "$distill" \
        --dataloader_num_workers 2 --report_to none
  fi
  if [[ " $STAGES " == *" eval "* ]]; then
    python3 -m medusa.eval.heads_accuracy --model "$WORK/heads_${name}" --base-model "$BASE" \
        --max-new-tokens 256 --batch-size 80 --build-tree 63 ${COST_CURVE:+--cost-curve "$COST_CURVE"} \
        --tree-output "$WORK/tree_${name}.json" --output "$WORK/eval_${name}.json"
  fi
done
