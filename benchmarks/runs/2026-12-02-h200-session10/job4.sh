# Issue 16: decoder layers compiled (compile_step="layers") against the uncompiled and whole-step compiled steps.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
R=/root/res4; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv > $R/gpu.txt
( export TORCHINDUCTOR_CACHE_DIR=/root/ic5
  TORCH_LOGS=recompiles python -m benchmarks.compile_start --model medusa/demo_heads --base-model /root/demo --layers --output $R/layers_cold.json > $R/layers_cold.log 2>&1
  python -m benchmarks.compile_start --model medusa/demo_heads --base-model /root/demo --layers --output $R/layers_warm.json > $R/layers_warm.log 2>&1
  touch $R/B.done
  python -m benchmarks.step_overhead --shape 7b --compile-step layers --output $R/overhead_7b_layers.json > $R/overhead_7b_layers.log 2>&1
  python -m benchmarks.step_overhead --shape 7b --output $R/overhead_7b_off.json > $R/overhead_7b_off.log 2>&1
  touch $R/A.done
  python -m benchmarks.profile_step --model medusa/demo_heads --base-model /root/demo --compile-step layers --output $R/prof135_layers.txt > $R/prof135_layers.log 2>&1
  python -m benchmarks.profile_step --shape 7b --tree mc_sim_7b_63 --compile-step layers --output $R/prof7b_layers.txt > $R/prof7b_layers.log 2>&1
  touch $R/C.done
  python -m benchmarks.mt_bench_speed --model medusa/demo_heads --base-model /root/demo --trees default --hf-limit 0 --overhead-shape none --compile-step layers --output $R/mt_bench_layers.json > $R/mt_bench_layers.log 2>&1
  touch $R/D.done ) 
