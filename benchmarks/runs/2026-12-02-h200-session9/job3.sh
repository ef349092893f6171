# Issue 16: background compiling with the capture lock: GPU tests, then first token cold and on a second launch.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p /root/res3
nvidia-smi --query-gpu=name,driver_version --format=csv > /root/res3/gpu.txt
( python -m pytest -q -p no:cacheprovider tests/test_gpu_batch.py tests/test_compile_warmup.py > /root/res3/gpu_tests.log 2>&1
  cs() { TORCHINDUCTOR_CACHE_DIR=/root/ic4 python -m benchmarks.compile_start --model medusa/demo_heads --base-model /root/demo --background "$@"; }
  cs --output /root/res3/bg_cold.json > /root/res3/bg_cold.log 2>&1
  cs --output /root/res3/bg_warm.json > /root/res3/bg_warm.log 2>&1
  touch /root/res3/A.done )
