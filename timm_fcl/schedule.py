"""The weight schedule of the FCL term: "we keep lambda = 0 until a certain number of training epochs" (section 3),
then a linear ramp (Appendix B: ramp_up steps) to the final weight; with ``FCLConfig.every`` the term is carried by
every n-th step only, with n times the weight there."""
from .config import FCLConfig


def fcl_weight(step: int, weight: float, start_step: int = 0, ramp_steps: int = 0) -> float:
    """lambda at optimizer step ``step`` (0-based): 0 before ``start_step``, then ``weight * (step - start + 1) / ramp``
    capped at ``weight``, so the first step of the ramp is already non-zero and step ``start + ramp - 1`` reaches it."""
    if step < start_step or weight == 0:
        return 0.0
    if ramp_steps <= 0:
        return float(weight)
    return float(weight) * min(1.0, (step - start_step + 1) / ramp_steps)


def scheduled_weight(config: FCLConfig, step: int) -> float:
    """lambda of the schedule at ``step`` (0 for method "xe"), whatever ``every`` skips: the value to log."""
    if config.method == "xe":
        return 0.0
    return fcl_weight(step, config.weight, config.start_step, config.ramp_steps)


def step_weight(config: FCLConfig, step: int) -> float:
    """The factor on the extra term at ``step``: lambda, times ``every`` on the steps that carry the term (so the
    expected gradient over steps matches the term on every step), 0 on the others."""
    if step < config.start_step or (step - config.start_step) % config.every:
        return 0.0
    return config.every * scheduled_weight(config, step)
