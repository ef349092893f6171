#!/usr/bin/env bash
# The seventh GPU session's background job: data, Medusa-2 training and evaluation, speed runs.
set -x
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
W=/root/work; mkdir -p $W
zcat .stage/p2/train_prompts.jsonl.gz > $W/prompts_all.jsonl
t0=$(date +%s); stamp() { echo "STAGE $1 at $(( $(date +%s) - t0 )) s" | tee -a $W/stages.log; }
stamp data
DATA_BATCH=128 DATA_SHARDS=2 DATA_TIMEOUT=${DATA_TIMEOUT:-270} scripts/train_demo_heads.sh /root/demo $W/prompts_all.jsonl $W 17453 data > $W/data.log 2>&1
stamp train
TRAIN_PARALLEL=1 EPOCHS=${EPOCHS:-1} BATCH=16 MAX_LENGTH=1536 scripts/train_demo_medusa2.sh /root/demo $W/prompts_all.jsonl $W 0 train > $W/train.log 2>&1
stamp eval
scripts/train_demo_medusa2.sh /root/demo $W/prompts_all.jsonl $W 0 eval ship > $W/eval.log 2>&1
stamp speed
python3 -m benchmarks.mt_bench_speed --model medusa/demo_heads --base-model /root/demo --max-new-tokens 256 --output $W/speed_m1.json > $W/speed_m1.log 2>&1
python3 -m benchmarks.mt_bench_speed --model $W/ship --base-model /root/demo --max-new-tokens 256 --output $W/speed_m2.json > $W/speed_m2.log 2>&1
stamp batch
python3 -m benchmarks.batch_speed --model medusa/demo_heads --base-model /root/demo --questions benchmarks/data/dev_prompts.jsonl --by-category --continuous --batch-sizes 4,16,64 --max-new-tokens 128 --modes default --output $W/batch.json > $W/batch.log 2>&1
stamp done
