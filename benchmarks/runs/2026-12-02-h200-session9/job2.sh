# Issue 16: the default (compile in the background) on the demo: first token cold and on a second launch; MT-bench with it.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p /root/res2
nvidia-smi --query-gpu=name,driver_version --format=csv > /root/res2/gpu.txt
git log -1 --format=%H >> /root/res2/gpu.txt 2>/dev/null
( cs() { TORCHINDUCTOR_CACHE_DIR=/root/ic3 python -m benchmarks.compile_start --model medusa/demo_heads --base-model /root/demo --background "$@"; }
  cs --output /root/res2/bg_cold.json > /root/res2/bg_cold.log 2>&1
  cs --output /root/res2/bg_warm.json > /root/res2/bg_warm.log 2>&1
  TORCHINDUCTOR_CACHE_DIR=/root/ic3 python -m benchmarks.mt_bench_speed --model medusa/demo_heads --base-model /root/demo \
     --max-new-tokens 256 --hf-limit 0 --overhead-shape none --output /root/res2/mt_bench_default.json > /root/res2/mt_bench_default.log 2>&1
  touch /root/res2/A.done
  python -m pytest -q -p no:cacheprovider tests/test_gpu_batch.py tests/test_compile_warmup.py > /root/res2/gpu_tests.log 2>&1
  touch /root/res2/B.done )
