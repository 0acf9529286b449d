"""FCL as a timm training task: ``timm.task.TrainingTask`` (timm >= 1.0.31) whose step is the regularizer's.

timm's task-based loops call ``task(input, target)`` and back-propagate ``result["loss"]``; ``FCLTask`` makes that
call one :class:`~timm_fcl.FeatureContrastiveRegularizer` step (cross-entropy plus the FCL term or a baseline's), so a
loop written for ``timm.task.ClassificationTask`` trains with FCL unchanged. The model stays the task's trainable and
eval module (checkpoints and EMA hold the plain model's weights); the task counts optimizer steps for the schedule of
lambda and keeps that count in its checkpoint state.
"""
from contextlib import nullcontext
from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.nn as nn
from timm.task import TrainingTask
from timm.task.classification import resolve_classification_loss

from .config import FCLConfig
from .regularizer import FeatureContrastiveRegularizer


class FCLTask(TrainingTask):
    """``task(input, target)`` -> ``{"loss", "output", "ce", "fcl", "fcl_weight"}``: the regularizer's step.

    Args:
        model: a timm classification model (``forward_features`` / ``forward_head`` split).
        config: the FCL settings (:class:`~timm_fcl.FCLConfig`); its ``start_step``, ``ramp_steps`` and ``every`` count
            optimizer steps, which the task counts: one per ``grad_accum_steps`` training calls.
        criterion: the classification loss; None: timm's ``create_classification_loss(**criterion_kwargs)``, as
            ``timm.task.ClassificationTask`` does.
        criterion_kwargs: arguments of ``create_classification_loss`` (e.g. ``dict(smoothing=0.1)``).
        grad_accum_steps: micro-batches per optimizer step (each loss divided by it before backward, as timm's
            train.py does), so lambda keeps weighing the sum of the term over the step's images.
        world_size: processes averaging gradients; None: taken from the process group in
            :meth:`prepare_distributed`, else 1.
        generator: the random generator of the perturbations (None: torch's global one).
        compile_backend: compile the regularizer's model calls (see FeatureContrastiveRegularizer).
    """

    def __init__(
            self,
            model: nn.Module,
            config: Optional[FCLConfig] = None,
            criterion: Optional[Union[nn.Module, Callable]] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            *,
            grad_accum_steps: int = 1,
            world_size: Optional[int] = None,
            generator: Optional[torch.Generator] = None,
            compile_backend: Optional[str] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        if isinstance(grad_accum_steps, bool) or not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be an integer >= 1, got {grad_accum_steps!r}")
        self.trainable_module = model
        self.criterion = resolve_classification_loss(criterion, self.device, criterion_kwargs=criterion_kwargs)
        self.regularizer = FeatureContrastiveRegularizer(model, config, loss_fn=self.criterion,
                                                         compile_backend=compile_backend, world_size=world_size)
        self._step_module: nn.Module = self.regularizer
        self.grad_accum_steps = grad_accum_steps
        self.generator = generator
        self.calls = 0  # training calls so far; the optimizer step is calls // grad_accum_steps

    @property
    def config(self) -> FCLConfig:
        return self.regularizer.config

    @property
    def step(self) -> int:
        """The optimizer step the next training call belongs to (the schedule's step)."""
        return self.calls // self.grad_accum_steps

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> "FCLTask":
        """Wraps the regularizer (one forward holds every pass of the step) in DistributedDataParallel; the model
        stays the trainable and eval module, so checkpoints hold its plain weights."""
        from torch.nn.parallel import DistributedDataParallel as DDP
        if self.regularizer.world_size is None:
            self.regularizer.world_size = torch.distributed.get_world_size()
        self._step_module = DDP(self.regularizer, device_ids=device_ids, **ddp_kwargs)
        return self

    def no_sync(self):
        return self._step_module.no_sync() if hasattr(self._step_module, "no_sync") else nullcontext()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        if not self.training:  # an evaluation call: the plain model's loss, no step counted
            output = self.trainable_module(input)
            return {"loss": self.criterion(output, target), "output": output}
        out = self._step_module(input, target, step=self.step, generator=self.generator,
                                group_size=self.grad_accum_steps)
        self.calls += 1
        return {
            "loss": out.loss,
            "output": out.logits,
            "ce": out.ce.detach(),
            "fcl": out.fcl,
            "fcl_weight": out.ce.new_tensor(out.weight * out.scale).detach(),
        }

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        if ema:  # an EMA copy is evaluated only: nothing of the step to keep
            return {}
        state = {"calls": self.calls}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_task_state(self, state: Optional[Dict[str, Any]], strict: bool = True, module: Optional[nn.Module] = None,
                        ema: bool = False) -> None:
        if ema:
            return
        if not state:
            if strict:
                raise RuntimeError("the checkpoint holds no FCLTask state (the step count of lambda's schedule)")
            return
        self.calls = int(state["calls"])
        if "generator" in state:
            if self.generator is None:
                raise RuntimeError("the checkpoint holds a perturbation generator's state but the task has none; "
                                   "create FCLTask with generator=torch.Generator()")
            self.generator.set_state(state["generator"])
