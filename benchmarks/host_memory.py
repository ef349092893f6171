"""Host memory of CPU work (Linux): how far one piece of work raises the process's peak resident size."""

import importlib.util
from types import ModuleType


def _status_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 2**20


def peak_added(fn):
    """``(fn(), GiB)``: GiB is how far ``fn`` raised the peak resident size above the size it started at.

    The peak (VmHWM) is reset to the current resident size first (``/proc/self/clear_refs``), so what
    was allocated before does not count. Measure in a fresh process: heap pages an earlier piece of
    work freed but kept would take the allocations unseen.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_gib("VmRSS:")
    out = fn()
    return out, _status_gib("VmHWM:") - before


def load_module_file(name: str, path: str) -> ModuleType:
    """Execute the Python file ``path`` as module ``name``: its relative imports resolve in ``name``'s package."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
