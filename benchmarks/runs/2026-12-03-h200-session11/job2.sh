# Issue 16 (part 2): MT-bench 80 with the defaults; GPU tests.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCHINDUCTOR_CACHE_DIR=/root/ic
timeout 420 python -m benchmarks.mt_bench_speed --model medusa/demo_heads --base-model /root/demo --trees default --hf-limit 0 --overhead-shape none --output $OUT/mt_bench.json > $OUT/mt_bench.log 2>&1
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_gpu_batch.py > $OUT/gpu_tests.log 2>&1
tail -14 $OUT/mt_bench.log; tail -3 $OUT/gpu_tests.log
