#!/usr/bin/env bash
# Every GPU measurement of issues 5 and 6 for one set of heads, in one go (~12 min on an H200: longer
# than one call of the lent GPU, so start it with setsid in one call and collect OUT_DIR in the next).
#
#   scripts/benchmark_demo.sh BASE_DIR HEADS_DIR OUT_DIR
#
# Writes OUT_DIR/{eval.json,tree.json,cost.json,mt_bench.json,batch.json,batch_continuous.json,
# profile.txt,log.txt} (eight files: tar them to bring them back from the lent GPU); mt_bench.json also
# holds the step overhead c of a random-weight 7B Llama.
# Record the figures in benchmarks/RESULTS.md.
set -uo pipefail
BASE=$1 HEADS=$2 OUT=$3
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
M=(--model "$HEADS" --base-model "$BASE")
{
  # The cost curve at MT-bench-like cache sizes (prompts of ~300 tokens, 256 new tokens).
  python3 -m medusa.eval.verify_cost "${M[@]}" --batch-sizes 1,4,16,64 --tree-sizes 1,2,4,8,16,32,64 \
      --prompt-len 300 --new-tokens 256 --iters 30 --output "$OUT/cost.json"
  python3 -m medusa.eval.heads_accuracy "${M[@]}" --max-new-tokens 256 --batch-size 80 --build-tree 63 \
      --cost-curve "$OUT/cost.json" --tree-output "$OUT/tree.json" --output "$OUT/eval.json"
  python3 -m benchmarks.mt_bench_speed "${M[@]}" --limit 40 --hf-limit 4 --trees "$OUT/tree.json" default --overhead-shape 7b \
      --output "$OUT/mt_bench.json" | tail -n 10
  for mode in "" --continuous; do
    python3 -m benchmarks.batch_speed "${M[@]}" --cost-curve "$OUT/cost.json" --accuracies "$OUT/eval.json" \
        --tree "$OUT/tree.json" $mode --output "$OUT/batch${mode:+_continuous}.json" | tail -n 5
  done
  python3 -m benchmarks.profile_step "${M[@]}" --tree "$OUT/tree.json" --output "$OUT/profile.txt" | grep "step"
} 2>&1 | grep -v "it/s\]" | tee "$OUT/log.txt"
