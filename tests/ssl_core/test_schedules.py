"""Cosine learning-rate schedule with linear warm-up."""

from __future__ import annotations

import itertools

import pytest

from ssl_core.schedules import cosine_schedule


def test_length_is_total_steps():
    assert len(cosine_schedule(1.0, 100, warmup_steps=10)) == 100
    assert len(cosine_schedule(1.0, 7)) == 7


def test_warmup_ramps_linearly_to_base():
    values = cosine_schedule(0.4, 100, warmup_steps=4)
    assert values[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_decay_starts_at_base_and_never_increases():
    base = 0.4
    values = cosine_schedule(base, 100, warmup_steps=10)
    decay = values[10:]
    assert decay[0] == pytest.approx(base)
    assert all(a >= b for a, b in itertools.pairwise(decay))


def test_last_value_is_just_above_final():
    values = cosine_schedule(1.0, 1000, warmup_steps=0, final_value=0.01)
    assert values[0] == pytest.approx(1.0)
    assert 0.01 < values[-1] < 0.01 + 1e-4


def test_warmup_longer_than_run_is_clipped():
    values = cosine_schedule(1.0, 5, warmup_steps=50)
    assert values == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


@pytest.mark.parametrize("total_steps", [0, -3])
def test_no_steps_raises(total_steps):
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(1.0, total_steps)
