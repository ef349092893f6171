export PYTHONPATH=/tmp/site:/work/main PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
cd /work/main; W=/root/work
echo "train $(date +%s)" >> $W/stages2.log
TRAIN_PARALLEL=1 EPOCHS=1 BATCH=16 MAX_LENGTH=1536 scripts/train_demo_medusa2.sh /root/demo x $W 0 train > $W/train.log 2>&1
echo "eval $(date +%s)" >> $W/stages2.log
scripts/train_demo_medusa2.sh /root/demo x $W 0 eval ship > $W/eval.log 2>&1
echo "speed $(date +%s)" >> $W/stages2.log
python3 -m benchmarks.mt_bench_speed --model $W/ship --base-model /root/demo --max-new-tokens 256 --output $W/speed_m2.json > $W/speed_m2.log 2>&1
echo "done $(date +%s)" >> $W/stages2.log
