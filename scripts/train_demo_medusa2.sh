#!/usr/bin/env bash
# Reproduce the shipped Medusa-2 demo (medusa/demo_medusa2/) for SmolLM2-135M-Instruct on one GPU.
#
#   scripts/train_demo_medusa2.sh BASE_DIR PROMPTS_JSONL WORK_DIR [NUM_PROMPTS] [stage...]
#
# The shipped demo (benchmarks/RESULTS.md, "The Medusa-2 demo"): DATA_TIMEOUT=270 DATA_BATCH=128
# DATA_SHARDS=2 for the data (5,045 conversations; data_generation/data/ holds them), then the defaults
# below for train, eval and ship. λ0 = 0.2 kept top-1 agreement at 0.886 only.
# stages (default: all):
#   data   self-distilled answers of the base model, the development prompts held out
#          (scripts/train_demo_heads.sh's data stage: WORK_DIR/train.jsonl and eval.jsonl)
#   train  one Medusa-2 run per CONFIGS entry: LoRA on the backbone with self-distillation (KL to the
#          original model), heads trained alone for the first WARMUP_FRACTION of the steps, then jointly
#          with λ0 · the heads' loss; writes WORK_DIR/m2_<name>/ (a Medusa-2 checkpoint)
#   eval   per run: top-1 agreement and KL with the original model, teacher-forced on its greedy answers to
#          the development prompts (WORK_DIR/agree_<name>.json), and the heads' accuracy and simulated
#          tokens/step on MT-bench with a grown 63-node tree (WORK_DIR/eval_<name>.json), which it writes
#          into the checkpoint as tree.json
#   ship   the run with the most simulated tokens/step among those with agreement >= 0.95 goes to
#          WORK_DIR/ship/ with its tensors in bf16 (what medusa/demo_medusa2/ holds); SHIP=<name> forces one
# Environment:
#   CONFIGS           λ0:lora_rank list (0.03:16); names are l<λ0>_r<rank>
#   EPOCHS (1), BATCH (16), LR (2e-4; the heads learn at 5x), WARMUP_FRACTION (0.4), MAX_LENGTH (1536)
#   TRAIN_PARALLEL    1: train every config at once on the one GPU (two runs of these sizes need more
#                     than an H200's 140 GB)
#   EVAL_TOKENS (256), EVAL_LIMIT (all questions)   of the eval stage
#   BF16 (True)       False for a CPU dry run
#   DATA_*            as scripts/train_demo_heads.sh
set -euo pipefail
BASE=$1 PROMPTS=$2 WORK=$3 N=${4:-17453}
shift $(( $# < 4 ? $# : 4 ))
STAGES=${*:-data train eval ship}
mkdir -p "$WORK"
cd "$(dirname "$0")/.."
DEV=benchmarks/data/dev_prompts.jsonl

if [[ " $STAGES " == *" data "* ]]; then
  scripts/train_demo_heads.sh "$BASE" "$PROMPTS" "$WORK" "$N" data
fi

names=() pids=()
for config in ${CONFIGS:-0.03:16}; do
  IFS=: read -r lambda0 rank <<< "$config"
  name=l${lambda0}_r${rank}
  names+=("$name")
  if [[ " $STAGES " == *" train "* ]]; then
    batch=${BATCH:-16} epochs=${EPOCHS:-1}
    conversations=$(grep -c . "$WORK/train.jsonl")
    warmup=$(python3 -c "import math; print(int($epochs * math.ceil($conversations / $batch) * ${WARMUP_FRACTION:-0.4}))")
    python3 -m medusa.train.train_medusa2 --model_name_or_path "$BASE" \
        --data_path "$WORK/train.jsonl" --eval_data_path "$WORK/eval.jsonl" --bf16 ${BF16:-True} \
        --output_dir "$WORK/m2_$name" --num_train_epochs "$epochs" \
        --per_device_train_batch_size "$batch" --per_device_eval_batch_size "$batch" \
        --learning_rate ${LR:-2e-4} --medusa_lr_multiplier 5 --weight_decay 0.0 --warmup_ratio 0.05 \
        --lr_scheduler_type cosine --logging_steps 50 --save_strategy no --eval_strategy no \
        --model_max_length ${MAX_LENGTH:-1536} --medusa_num_heads 3 --medusa_num_layers 3 \
        --medusa_head_type shared_lm_head --medusa_heads_coefficient "$lambda0" \
        --medusa_heads_warmup heads_only --medusa_warmup_steps "$warmup" --medusa_self_distillation true \
        --lora_r "$rank" --lora_alpha $((2 * rank)) \
        --dataloader_num_workers 2 --report_to none > >(tee "$WORK/train_$name.log") 2>&1 &
    if [[ ${TRAIN_PARALLEL:-0} == 1 ]]; then pids+=($!); else wait $!; fi
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done

if [[ " $STAGES " == *" eval "* ]]; then
  for name in "${names[@]}"; do
    python3 -m medusa.eval.agreement --model "$WORK/m2_$name" --questions "$DEV" --max-new-tokens ${EVAL_TOKENS:-256} \
        --batch-size 80 ${EVAL_LIMIT:+--limit $EVAL_LIMIT} --output "$WORK/agree_$name.json"
    python3 -m medusa.eval.heads_accuracy --model "$WORK/m2_$name" --max-new-tokens ${EVAL_TOKENS:-256} --batch-size 80 \
        ${EVAL_LIMIT:+--limit $EVAL_LIMIT} --build-tree 63 --tree-output "$WORK/m2_$name/tree.json" --output "$WORK/eval_$name.json"
  done
fi

if [[ " $STAGES " == *" ship "* ]]; then
  python3 - "$WORK" "${SHIP:-}" "${names[@]}" <<'PY'
import json, os, shutil, sys
from safetensors.torch import load_file, save_file
from medusa.demo import DEMO_BASE_NAME
work, forced, names = sys.argv[1], sys.argv[2], sys.argv[3:]
scores = {}
for name in names:
    agreement = json.load(open(f"{work}/agree_{name}.json"))["top1_agreement"]
    tokens = json.load(open(f"{work}/eval_{name}.json"))["trees"]["built_63"]["tokens_per_step"]
    print(f"{name}: top-1 agreement {agreement:.4f}, simulated {tokens:.3f} tokens/step")
    if agreement >= 0.95:
        scores[name] = tokens
if not (forced or scores):
    sys.exit("No run keeps top-1 agreement >= 0.95: ship one by SHIP=<name>, or train with a smaller λ0.")
name = forced or max(scores, key=scores.get)
source, ship = f"{work}/m2_{name}", f"{work}/ship"
shutil.rmtree(ship, ignore_errors=True)
shutil.copytree(source, ship, ignore=shutil.ignore_patterns("training_summary.json", "README.md"))
for path in (f"{ship}/medusa_lm_head.safetensors", f"{ship}/adapter/adapter_model.safetensors"):
    save_file({k: v.bfloat16() for k, v in load_file(path).items()}, path, metadata={"format": "pt"})
for path in (f"{ship}/config.json", f"{ship}/adapter/adapter_config.json"):
    config = json.load(open(path))
    config["base_model_name_or_path"] = DEMO_BASE_NAME  # the demo's base is converted locally, found by name
    json.dump(config, open(path, "w"), indent=2)
print(f"shipped {name} to {ship}")
PY
fi
