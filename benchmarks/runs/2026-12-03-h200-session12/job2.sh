# Issue 16 (part 2): MT-bench 80 with the defaults; the first token of a chat reply on a second launch.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCHINDUCTOR_CACHE_DIR=/root/ic
F=benchmarks/runs/2026-12-02-h200-session10/first_token2.py
PRELOAD=1 timeout 60 python $F > $OUT/first_token_a.json 2> $OUT/first_token_a.log
PRELOAD=1 timeout 40 python $F > $OUT/first_token_b.json 2> $OUT/first_token_b.log
timeout 420 python -m benchmarks.mt_bench_speed --model medusa/demo_heads --base-model /root/demo --trees default --hf-limit 0 --overhead-shape none --output $OUT/mt_bench.json > $OUT/mt_bench.log 2>&1
cat $OUT/first_token_*.json; tail -n 14 $OUT/mt_bench.log
