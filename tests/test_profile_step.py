"""The step profile's split of GPU time: busy (the kernels' union), gaps inside a step, gaps between steps."""

from types import SimpleNamespace

import pytest

from benchmarks.profile_step import HOST_GAP_US, idle_time


def kernel(start, stop):
    return SimpleNamespace(time_range=SimpleNamespace(start=start, end=stop))


def test_idle_time_splits_busy_short_and_long_gaps():
    # Two steps: kernels [0, 10) and [12, 20) overlapping [15, 25); the host's gap; then [25 + g, 40 + g).
    g = HOST_GAP_US + 5
    kernels = [kernel(25 + g, 40 + g), kernel(12, 20), kernel(0, 10), kernel(15, 25)]
    busy, short, long = idle_time(kernels)
    assert busy == pytest.approx(10 + 13 + 15)  # the overlap counted once
    assert short == pytest.approx(2)
    assert long == pytest.approx(g)
    assert busy + short + long == pytest.approx(40 + g)  # the whole span, from the first start to the last end


def test_idle_time_of_no_kernels_is_zero():
    assert idle_time([]) == (0.0, 0.0, 0.0)
