# Issue 19: dynamic vs fixed trees with better heads; issue 17/16: verify_cost again; clean MT-bench speed at this commit.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p /root/res
( for m in demo_medusa2 demo_heads; do for q in mt24 dev; do
    Q=.stage/job/mt24.jsonl; [ $q = dev ] && Q=benchmarks/data/dev_prompts.jsonl
    python -m medusa.eval.heads_accuracy --model medusa/$m --base-model /root/demo --questions $Q --max-new-tokens 128 \
      --trees medusa/$m/tree.json --dynamic 15 31 63 --device cuda --dtype float32 --output /root/res/sim_${m}_$q.json > /root/res/sim_${m}_$q.log 2>&1
  done; done
  python -m benchmarks.mt_bench_speed --model medusa/demo_heads --base-model /root/demo --max-new-tokens 256 \
     --hf-limit 0 --overhead-shape none --output /root/res/mt_bench.json > /root/res/mt_bench.log 2>&1
  python -m medusa.eval.verify_cost --model medusa/demo_heads --base-model /root/demo --output /root/res/verify_cost_2.json > /root/res/verify_cost_2.log 2>&1
  touch /root/res/C.done )
