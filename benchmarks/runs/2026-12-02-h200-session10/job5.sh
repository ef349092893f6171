# Issue 16: decoder layers compiled, cache writes eager (compile_step="layers").
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
R=/root/res5; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv > $R/gpu.txt
( export TORCHINDUCTOR_CACHE_DIR=/root/ic6
  TORCH_LOGS=recompiles python -m benchmarks.compile_start --model medusa/demo_heads --base-model /root/demo --layers --output $R/layers_cold.json > $R/layers_cold.log 2>&1
  python -m benchmarks.compile_start --model medusa/demo_heads --base-model /root/demo --layers --output $R/layers_warm.json > $R/layers_warm.log 2>&1
  python .stage/job/first_token.py layers > $R/first_token_warm.json 2> $R/first_token_warm.log
  TORCHINDUCTOR_COMPILE_THREADS=1 python .stage/job/first_token.py layers > $R/first_token_warm_1thread.json 2> $R/first_token_warm_1thread.log
  python .stage/job/first_token.py off > $R/first_token_off.json 2> $R/first_token_off.log
  touch $R/B.done
  python -m benchmarks.step_overhead --shape 7b --compile-step layers --output $R/overhead_7b_layers.json > $R/overhead_7b_layers.log 2>&1
  touch $R/A.done
  python -m benchmarks.profile_step --shape 7b --tree mc_sim_7b_63 --compile-step layers --output $R/prof7b_layers.txt > $R/prof7b_layers.log 2>&1
  python -m benchmarks.profile_step --model medusa/demo_heads --base-model /root/demo --compile-step layers --output $R/prof135_layers.txt > $R/prof135_layers.log 2>&1
  touch $R/C.done
  python -m benchmarks.mt_bench_speed --model medusa/demo_heads --base-model /root/demo --trees default --hf-limit 0 --overhead-shape none --compile-step layers --output $R/mt_bench_layers.json > $R/mt_bench_layers.log 2>&1
  touch $R/D.done ) 
