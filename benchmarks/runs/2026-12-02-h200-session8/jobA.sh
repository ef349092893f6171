# Issue 14: fp32 logits on the GPU; issue 17: the demo heads' cost curve from the package's module.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p /root/res
nvidia-smi --query-gpu=name,driver_version --format=csv > /root/res/gpu.txt
git log -1 --format=%H >> /root/res/gpu.txt 2>/dev/null
python -c "import torch, transformers; print(torch.__version__, transformers.__version__)" >> /root/res/gpu.txt
( python -m pytest -q -p no:cacheprovider tests/test_fp32_logits.py tests/test_gpu_batch.py > /root/res/gpu_tests.log 2>&1
  python -m medusa.eval.verify_cost --model medusa/demo_heads --base-model /root/demo --output /root/res/verify_cost.json > /root/res/verify_cost.log 2>&1
  python -m benchmarks.mt_bench_speed --model medusa/demo_heads --base-model /root/demo --max-new-tokens 256 \
     --hf-limit 0 --overhead-shape none --fp32-logits --output /root/res/fp32_logits.json > /root/res/fp32_logits.log 2>&1
  touch /root/res/A.done ) 
