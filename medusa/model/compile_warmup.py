"""Compile decode steps on a worker thread while the uncompiled step serves (``medusa_generate(compile_step="background")``).

Compiling a step variant (tree, batch size, cache shape, span; :mod:`medusa.model.compiled_layers`) takes
seconds, more while PyTorch's on-disk cache is cold.
Instead of making the first token wait, the decode loop keeps running the uncompiled step (from its
CUDA graph) and asks a :class:`BackgroundCompiler` for the compiled variant; the worker compiles it by
running it once on a scratch cache of the same shape, and once it reports the variant ready, the loop
switches to it. The worker's run leaves what the main thread needs in dynamo's code cache: the same
function, guards that match (same shapes, same inference mode), so the switch does not recompile.
"""

import atexit
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Hashable

import torch

from .kv_cache import free_memory

logger = logging.getLogger(__name__)

_compilers: "weakref.WeakSet[BackgroundCompiler]" = weakref.WeakSet()

Call = Callable[[], bool]  # the worker's job for one variant: True once compiled, False if it chose not to


class BackgroundCompiler:
    """One worker thread that runs compile jobs in turn, and which variants it has ready.

    A :class:`~medusa.model.cache_pool.CachePool` owns one. The pool, not the per-call
    ``DecodeSetup``, because readiness holds for one model on one device in one dtype: a model that
    is moved or cast renews its pool, so its compiler starts afresh, while every generation of an
    unchanged model (each builds a new ``DecodeSetup``) shares what was compiled.

    The worker is a daemon thread started by the first request and ended when no request waits, so
    a pool that is dropped leaves no idle thread behind.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: deque[tuple[Hashable, Call]] = deque()
        self._state: dict[Hashable, str] = {}  # "pending", "ready" or "failed"
        self._worker: threading.Thread | None = None
        self._warned = False
        # Held while the worker runs a job and while the decode loop captures a CUDA graph: on an H200 a
        # capture failed (cudaErrorStreamCaptureInvalidated) when the worker launched work on its own
        # stream during it, in either capture mode; so the loop runs a step eagerly rather than wait.
        self.device_lock = threading.Lock()
        _compilers.add(self)

    def request(self, key: Hashable, make_call: Callable[[], Call]) -> None:
        """Queue a compile of variant ``key``, unless it is ready, pending or failed.

        ``make_call`` runs here, on the caller's thread and only for a new key, so that it can copy the
        live tensors the job needs in the caller's stream order; the job it returns runs on the
        worker, in inference mode (thread-local: a variant traced outside it would not match the
        decode loop's guards and would recompile there).
        """
        with self._lock:
            if key in self._state:
                return
            call = make_call()
            self._state[key] = "pending"
            self._jobs.append((key, call))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="medusa-compile", daemon=True)
                self._worker.start()

    def ready(self, key: Hashable) -> bool:
        """Whether variant ``key`` has been compiled (the decode loop may switch to it)."""
        return self._state.get(key) == "ready"

    def wait(self) -> None:
        """Block until every job requested so far is done (for tests and benchmarks)."""
        while (worker := self._worker) is not None:
            worker.join()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    self._worker = None
                    return
                key, call = self._jobs.popleft()
            try:
                with self.device_lock, torch.inference_mode():
                    done = call()
            except Exception as error:  # any failure leaves the uncompiled step serving
                # One warning: a chat would otherwise print one at every new variant (a new span every 256 tokens).
                logger.log(logging.INFO if self._warned else logging.WARNING, "Compiling a decode step in the "
                           "background failed; that step stays uncompiled (%s: %s).", type(error).__name__, error)
                self._warned, done = True, False
            self._state[key] = "ready" if done else "failed"


def scratch_run(pool, cache, step: Callable, inputs: tuple[torch.Tensor, ...]) -> Callable[[], Call]:
    """``make_call`` for :meth:`BackgroundCompiler.request`: ``step(scratch, *inputs)`` once on a scratch cache.

    Args:
        pool: the :class:`~medusa.model.cache_pool.CachePool` that makes the scratch cache.
        cache: the live cache; the scratch one gets its capacity, batch size, row lengths and span,
            so the step has the same shapes and writes where the live one would.
        step: ``(cache, root, hidden, active) -> ...``, the compiled step with everything else bound.
        inputs: ``(root [batch], hidden [batch, d], active [batch])``, copied when ``make_call`` runs.

    The job skips (logs it and returns False) when the device has under twice the scratch cache's bytes
    free: compiling must not take the memory that decoding needs. On CUDA it runs in its own stream,
    after the copies, and waits for that stream before it returns.
    """
    def make_call() -> Call:
        device, capacity, batch_size = cache.length.device, cache.capacity, cache.batch_size
        length, host_length, span = cache.length.clone(), cache.host_length, cache.span
        copies = tuple(x.clone() for x in inputs)
        copied = None
        if device.type == "cuda":
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(device))
        nbytes = cache.bytes_per_slot() * batch_size * capacity

        def call() -> bool:
            free = free_memory(device)
            if free is not None and free < 2 * nbytes:
                logger.info("Not compiling a decode step in the background: %d MiB free on %s, under twice the "
                            "%d MiB of its scratch cache.", free >> 20, device, nbytes >> 20)
                return False
            stream = torch.cuda.Stream(device) if copied is not None else None
            try:
                with torch.cuda.stream(stream):  # None: no stream change (CPU)
                    if copied is not None:
                        stream.wait_event(copied)
                    scratch = pool.new_cache(capacity, batch_size)
                    scratch.length.copy_(length)
                    scratch.host_length, scratch.span = host_length, span
                    step(scratch, *copies)
            finally:  # also after a failure: the copies, made on the caller's stream, return to its pool when freed
                if stream is not None:
                    stream.synchronize()
            return True

        return call

    return make_call


@atexit.register
def _finish_compiles() -> None:
    """Let running compiles end before the interpreter does: a process that exited while the worker compiled
    aborted in PyTorch's teardown ("terminate called without an active exception", exit status 134)."""
    for compiler in list(_compilers):
        compiler.wait()
