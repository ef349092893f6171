# Issue 16, after the accepted-prefix reduction (verify without a scan): GPU tests, the demo's graph-step profile
# (profile_step now profiles graph replays), MT-bench 80 with the defaults, the first token of a second launch,
# the 7B shape.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCHINDUCTOR_CACHE_DIR=/root/ic
D="--model medusa/demo_heads --base-model /root/demo"
F=benchmarks/runs/2026-12-02-h200-session10/first_token2.py
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_gpu_batch.py > $OUT/gpu_tests.log 2>&1
timeout 150 python -m benchmarks.profile_step $D --output $OUT/prof135.txt > $OUT/prof135.log 2>&1
timeout 150 python -m benchmarks.mt_bench_speed $D --trees default --hf-limit 0 --overhead-shape none --output $OUT/mt_bench.json > $OUT/mt_bench.log 2>&1
PRELOAD=1 timeout 50 python $F > $OUT/first_token_a.json 2> $OUT/first_token_a.log
PRELOAD=1 timeout 35 python $F > $OUT/first_token_b.json 2> $OUT/first_token_b.log
timeout 120 python -m benchmarks.step_overhead --shape 7b --output $OUT/overhead_7b.json > $OUT/overhead_7b.log 2>&1
tail -n 1 $OUT/gpu_tests.log; grep -h "step\|^ " $OUT/prof135.txt | head -24; tail -n 11 $OUT/mt_bench.log
cat $OUT/first_token_*.json; grep -h "ms_per_step\|overhead_c\|equal" $OUT/overhead_7b.json
for f in $OUT/*.log; do echo "== $f"; tail -n 2 $f; done
