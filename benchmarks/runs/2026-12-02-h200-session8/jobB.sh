# Issue 16: where the step's time goes (135M and 7B shape), and compile_step's start-up cold and warm.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p /root/res
( python -m benchmarks.profile_step --model medusa/demo_heads --base-model /root/demo --output /root/res/profile_135m.txt > /root/res/profile_135m.log 2>&1
  python -m benchmarks.profile_step --shape 7b --tree mc_sim_7b_63 --output /root/res/profile_7b.txt > /root/res/profile_7b.log 2>&1
  cs() { python -m benchmarks.compile_start --model medusa/demo_heads --base-model /root/demo "$@"; }
  TORCHINDUCTOR_CACHE_DIR=/root/ic cs --artifacts /root/art.bin --output /root/res/compile_cold.json > /root/res/compile_cold.log 2>&1
  TORCHINDUCTOR_CACHE_DIR=/root/ic cs --output /root/res/compile_warm_disk.json > /root/res/compile_warm_disk.log 2>&1
  TORCHINDUCTOR_CACHE_DIR=/root/ic2 cs --artifacts /root/art.bin --output /root/res/compile_artifacts.json > /root/res/compile_artifacts.log 2>&1
  touch /root/res/B.done )
