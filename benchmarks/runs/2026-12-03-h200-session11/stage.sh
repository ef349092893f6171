# Staging: $1 = part folder; the last call assembles the demo model in /root/demo.
set -e
mkdir -p /root/stage && cp .stage/$1/gguf.0* /root/stage/
if [ -e /root/stage/gguf.03 ]; then
  cat /root/stage/gguf.00 /root/stage/gguf.01 /root/stage/gguf.02 /root/stage/gguf.03 > /root/g.gguf
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .stage/p4/gguf-*.whl
  PYTHONPATH=/tmp/site:$PWD python3 -c "from medusa.demo import convert_gguf; convert_gguf('/root/g.gguf', '/root/demo')"
  ls -la /root/demo
fi
ls -la /root/stage
