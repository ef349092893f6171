"""Capture a decode step in a CUDA graph: an eager step's time is mostly kernel launches (docs/design.md, CUDA graphs).

The step must have static shapes and no host synchronisation; everything it reads or writes lives in
buffers that outlive the graph (the KV cache, the tree buffers, the static inputs held here).
"""

from collections.abc import Callable

import torch


class GraphedStep:
    """``step(*inputs) -> outputs`` replayed from a CUDA graph.

    Calling it copies the inputs into static buffers, replays the graph and returns the static
    output tensors, which the next call overwrites.

    Args:
        step: the function to capture; it may mutate the KV cache.
        example_inputs: tensors with the shapes and dtypes of every later call's inputs.
        cache: the KV cache the step writes; its ``length`` is restored after the warm-up runs.
    """

    def __init__(self, step: Callable, example_inputs: tuple[torch.Tensor, ...], cache):
        self.step = step  # keeps every tensor the graph reads (tree buffers, ...) alive
        self.inputs = tuple(x.clone() for x in example_inputs)
        length = cache.length.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (lazy init, cuBLAS workspaces)
            for _ in range(2):
                step(*self.inputs)
                cache.length.copy_(length)  # the warm-up writes only beyond length; undo the advance
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(*self.inputs)

    def __call__(self, *inputs: torch.Tensor):
        for static, x in zip(self.inputs, inputs):
            static.copy_(x)
        self.graph.replay()
        return self.outputs
