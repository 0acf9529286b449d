"""timm_fcl.schedule: lambda over the steps."""
import pytest

from timm_fcl import fcl_weight


def test_weight_schedule_is_zero_then_linear_ramp():
    w = [fcl_weight(s, 0.01, start_step=3, ramp_steps=4) for s in range(9)]
    assert w[:3] == [0.0, 0.0, 0.0]
    assert w[3:] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01])
    assert fcl_weight(0, 0.5) == 0.5 and fcl_weight(10, 0.0, 0, 5) == 0.0
