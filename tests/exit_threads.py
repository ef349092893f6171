"""``python -m tests.exit_threads SCRIPT ARGS...``: runs SCRIPT as ``python SCRIPT ARGS...`` would, then, as
the interpreter starts to exit, writes the names of the threads still running to stderr
(``threads at exit: [...]``), for tests that check a script leaves no native threads to finalization."""

import atexit
import os
import runpy
import sys


def _report() -> None:
    names = sorted(open(f"/proc/self/task/{tid}/comm").read().strip() for tid in os.listdir("/proc/self/task"))
    # One write of the whole line: the ranks of a torchrun share stderr, and a print's separate newline
    # lets their lines run together.
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), f"threads at exit: {names}\n".encode())


atexit.register(_report)  # registered first, so it runs after every later handler (torch's, accelerate's)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
