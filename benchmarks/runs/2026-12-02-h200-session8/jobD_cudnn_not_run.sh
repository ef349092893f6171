# Issue 16: are the verify-cost cliffs cuDNN attention's? The same curve with and without the cuDNN SDPA backend.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p /root/res
for cudnn in 1 0; do
python - <<PY > /root/res/vc_cudnn$cudnn.log 2>&1
import runpy, sys, torch
torch.backends.cuda.enable_cudnn_sdp(bool($cudnn))
print("cudnn sdp", torch.backends.cuda.cudnn_sdp_enabled())
sys.argv = ["verify_cost", "--model", "medusa/demo_heads", "--base-model", "/root/demo", "--batch-sizes", "1,4,16",
            "--tree-sizes", "1,2,4,16,64,96,128", "--iters", "30", "--output", "/root/res/vc_cudnn$cudnn.json"]
runpy.run_module("medusa.eval.verify_cost", run_name="__main__")
PY
done
