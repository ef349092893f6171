import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread_for_tiny_models(request):
    """Tiny models do thousands of small forwards: thread hand-offs would cost more than the arithmetic.

    Tests marked ``slow`` (the real 135M model) keep every thread.
    """
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
