# Issue 16: cuDNN SDPA and the cost cliffs / step times; background compile probe (cold, then warm disk cache).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p /root/res
nvidia-smi --query-gpu=name,driver_version --format=csv > /root/res/gpu.txt
python -c "import torch, transformers; print(torch.__version__, transformers.__version__)" >> /root/res/gpu.txt
with_cudnn() {  # $1 = 1/0, then a module and its arguments
python - "$@" <<'PY'
import runpy, sys, torch
torch.backends.cuda.enable_cudnn_sdp(sys.argv[1] == "1")
print("cudnn sdp", torch.backends.cuda.cudnn_sdp_enabled(), flush=True)
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__")
PY
}
( for c in 1 0; do
    with_cudnn $c medusa.eval.verify_cost --model medusa/demo_heads --base-model /root/demo --batch-sizes 1,4,16 \
      --tree-sizes 1,2,4,16,64,84,96,128 --iters 30 --output /root/res/vc_cudnn$c.json > /root/res/vc_cudnn$c.log 2>&1
    with_cudnn $c benchmarks.profile_step --model medusa/demo_heads --base-model /root/demo --output /root/res/prof135_cudnn$c.txt > /root/res/prof135_cudnn$c.log 2>&1
    with_cudnn $c benchmarks.profile_step --shape 7b --tree mc_sim_7b_63 --output /root/res/prof7b_cudnn$c.txt > /root/res/prof7b_cudnn$c.log 2>&1
  done
  touch /root/res/A.done ) &
wait
( TORCHINDUCTOR_CACHE_DIR=/root/ic python .stage/job/bg_compile_probe.py /root/res/bg_cold.json > /root/res/bg_cold.log 2>&1
  TORCHINDUCTOR_CACHE_DIR=/root/ic python .stage/job/bg_compile_probe.py /root/res/bg_warm.json > /root/res/bg_warm.log 2>&1
  touch /root/res/B.done )
