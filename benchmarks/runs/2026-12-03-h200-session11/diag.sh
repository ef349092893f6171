# Diagnose the device-side assert of test_gpu_batch [True-mc_sim_7b_63] with the compiled step: which part.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCHINDUCTOR_CACHE_DIR=/root/ic
T="tests/test_gpu_batch.py -k True-mc_sim"
M=medusa/model; cp $M/kv_cache.py /root/kv_new.py; cp $M/generate.py /root/gen_new.py
CUDA_LAUNCH_BLOCKING=1 timeout 110 python -m pytest -q -x -p no:cacheprovider $T > $OUT/diag_new.log 2>&1
grep -h "passed\|failed" $OUT/diag_new.log; grep -h "\.py:[0-9]*: in\|triton_.*run\|Error" $OUT/diag_new.log | head -30
sed -i 's/    return tuple(torch.compile(stage, backend=backend, dynamic=False) for stage in (draft, verify))/    return torch.compile(draft, backend=backend, dynamic=False), verify/' $M/generate.py
timeout 90 python -m pytest -q -x -p no:cacheprovider $T > $OUT/diag_noverify.log 2>&1
cp /root/gen_new.py $M/generate.py
cp .stage/job/old_kv_cache.py $M/kv_cache.py
timeout 90 python -m pytest -q -x -p no:cacheprovider $T > $OUT/diag_oldkv.log 2>&1
cp /root/kv_new.py $M/kv_cache.py
TORCHINDUCTOR_PERSISTENT_REDUCTIONS=0 TORCHINDUCTOR_CACHE_DIR=/root/ic2 timeout 90 python -m pytest -q -x -p no:cacheprovider $T > $OUT/diag_nopersistent.log 2>&1
for f in $OUT/diag_*.log; do echo "$f: $(grep -h 'passed\|failed' $f | tail -1)"; done
