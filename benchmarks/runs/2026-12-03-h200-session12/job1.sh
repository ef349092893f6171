# Issue 16 on the committed code (verify compiled without persistent reductions): the GPU batch tests,
# the demo's step profile (eager steps compiled as the graph step is), the 7B shape.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCHINDUCTOR_CACHE_DIR=/root/ic
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt
git rev-parse HEAD > $OUT/commit.txt 2>/dev/null
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_gpu_batch.py > $OUT/gpu_tests.log 2>&1
D="--model medusa/demo_heads --base-model /root/demo"
timeout 170 python -m benchmarks.profile_step $D --output $OUT/prof135.txt > $OUT/prof135.log 2>&1
timeout 170 python -m benchmarks.step_overhead --shape 7b --output $OUT/overhead_7b.json > $OUT/overhead_7b.log 2>&1
tail -n 3 $OUT/gpu_tests.log; grep -h "graph step" $OUT/prof135.txt; grep -h "ms_per_step\|overhead_c\|equal" $OUT/overhead_7b.json
for f in $OUT/*.log; do echo "== $f"; tail -n 2 $f; done
