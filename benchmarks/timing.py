"""Wall-clock timing of GPU work: the device is synchronised before and after."""

import time

import torch


def timed(fn):
    """``(fn(), seconds)``, with the GPU (if any) synchronised before and after."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    synchronize()
    start = time.perf_counter()
    out = fn()
    synchronize()
    return out, time.perf_counter() - start

