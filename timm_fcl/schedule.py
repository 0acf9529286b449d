"""The weight schedule of the FCL term: "we keep lambda = 0 until a certain number of training epochs" (section 3),
then a linear ramp (Appendix B: ramp_up steps) to the final weight."""


def fcl_weight(step: int, weight: float, start_step: int = 0, ramp_steps: int = 0) -> float:
    """lambda at optimizer step ``step`` (0-based): 0 before ``start_step``, then ``weight * (step - start + 1) / ramp``
    capped at ``weight``, so the first step of the ramp is already non-zero and step ``start + ramp - 1`` reaches it."""
    if step < start_step or weight == 0:
        return 0.0
    if ramp_steps <= 0:
        return float(weight)
    return float(weight) * min(1.0, (step - start_step + 1) / ramp_steps)
