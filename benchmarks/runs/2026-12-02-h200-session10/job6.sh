export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCHINDUCTOR_CACHE_DIR=/root/ic8
python .stage/job/first_token2.py > $OUT/first_token_cold.json 2> $OUT/first_token_cold.log
python .stage/job/first_token2.py > $OUT/first_token_warm.json 2> $OUT/first_token_warm.log
cat $OUT/first_token_*.json
timeout 240 python -m pytest -q -p no:cacheprovider tests/test_gpu_batch.py > $OUT/gpu_tests.log 2>&1; tail -3 $OUT/gpu_tests.log
