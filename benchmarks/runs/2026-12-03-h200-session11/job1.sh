# Issue 16 (part 1): the new step (compiled draft/verify stages, one shared-lm_head product, cache write inside the
# layer graphs): demo profile, first token of a chat reply, 7B shape.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCHINDUCTOR_CACHE_DIR=/root/ic
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt
D="--model medusa/demo_heads --base-model /root/demo"
timeout 170 python -m benchmarks.profile_step $D --output $OUT/prof135_new.txt > $OUT/prof135_new.log 2>&1
PRELOAD=1 timeout 50 python .stage/job/first_token2.py > $OUT/first_token_a.json 2> $OUT/first_token_a.log
PRELOAD=1 timeout 40 python .stage/job/first_token2.py > $OUT/first_token_b.json 2> $OUT/first_token_b.log
timeout 170 python -m benchmarks.step_overhead --shape 7b --output $OUT/overhead_7b.json > $OUT/overhead_7b.log 2>&1
grep -h "graph step" $OUT/prof135_*.txt; cat $OUT/first_token_*.json; grep -h "ms_per_step\|overhead_c\|equal" $OUT/overhead_7b.json; tail -2 $OUT/*.log
