"""FCLTask: timm's task-based training loop driven by the regularizer's step."""
import copy

import pytest
import timm
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.task import TrainingTask

from timm_fcl import FCLConfig, FeatureContrastiveRegularizer
from timm_fcl.task import FCLTask

CONFIG = FCLConfig(k=60, sigma=0.5, tau=0.5, weight=0.01, start_step=1, ramp_steps=2)


def lenet():
    torch.manual_seed(0)
    return timm.create_model("lenet_mnist", num_classes=10)


def batches(data, n, size=8):
    x, y = data
    return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(n)]


def test_task_steps_are_the_regularizers(mnist_like):
    # the same model trained through timm's task interface and through the regularizer directly: every step's loss
    # and the final weights are equal (the schedule of lambda advanced by the task's own step count)
    model_a, model_b = lenet(), lenet()
    task = FCLTask(model_a, CONFIG, criterion_kwargs=dict(smoothing=0.1), generator=torch.Generator().manual_seed(5),
                   verbose=False)
    assert isinstance(task, TrainingTask) and isinstance(task.criterion, LabelSmoothingCrossEntropy)
    reg = FeatureContrastiveRegularizer(model_b, CONFIG, loss_fn=LabelSmoothingCrossEntropy(0.1))
    gen_b = torch.Generator().manual_seed(5)
    opt_a = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.1)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1)
    task.train(), reg.train()
    weights = []
    for step, (x, y) in enumerate(batches(mnist_like, 5)):
        result = task(x, y)
        out = reg(x, y, step=step, generator=gen_b)
        assert torch.equal(result["loss"], out.loss) and torch.equal(result["output"], out.logits)
        weights.append(float(result["fcl_weight"]))
        for opt, loss in ((opt_a, result["loss"]), (opt_b, out.loss)):
            opt.zero_grad()
            loss.backward()
            opt.step()
    # lambda 0 before start_step 1, then ramped over 2 steps; times the batch of 8 (lambda on the batch sum)
    assert weights == pytest.approx([0.0, 0.005 * 8, 0.01 * 8, 0.01 * 8, 0.01 * 8])
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    # the checkpoint holds the plain model's weights, as timm's loop saves them
    assert set(task.get_checkpoint_state()["state_dict"]) == set(model_b.state_dict())


def test_task_counts_optimizer_steps_under_accumulation(mnist_like):
    task = FCLTask(lenet(), CONFIG, grad_accum_steps=2, verbose=False).train()
    seen = []
    for x, y in batches(mnist_like, 6, size=4):
        result = task(x, y)
        seen.append(float(result["fcl_weight"]))
    # two micro-batches per step; the scale is 4 images x 2 micro-batches
    assert seen == pytest.approx([0, 0, 0.005 * 8, 0.005 * 8, 0.01 * 8, 0.01 * 8])
    assert task.step == 3


def test_task_state_resumes_the_schedule_and_the_noise(mnist_like):
    data = batches(mnist_like, 4)
    whole = FCLTask(lenet(), CONFIG, generator=torch.Generator().manual_seed(1), verbose=False).train()
    losses = [whole(x, y)["loss"].item() for x, y in data]

    first = FCLTask(lenet(), CONFIG, generator=torch.Generator().manual_seed(1), verbose=False).train()
    for x, y in data[:2]:
        first(x, y)
    state = copy.deepcopy(first.get_checkpoint_state())
    second = FCLTask(lenet(), CONFIG, generator=torch.Generator().manual_seed(99), verbose=False).train()
    second.load_checkpoint_state(state["state_dict"], state["task_state"])
    assert second.step == 2
    assert [second(x, y)["loss"].item() for x, y in data[2:]] == losses[2:]
    with pytest.raises(RuntimeError, match="step count"):
        second.load_task_state(None)


def test_task_evaluates_the_plain_model(mnist_like):
    x, y = mnist_like[0][:8], mnist_like[1][:8]
    model = lenet()
    task = FCLTask(model, CONFIG, verbose=False).eval()
    result = task(x, y)
    with torch.no_grad():
        assert torch.equal(result["output"], model(x))
    assert task.step == 0 and set(result) == {"loss", "output"}
    with pytest.raises(ValueError, match="grad_accum_steps"):
        FCLTask(model, CONFIG, grad_accum_steps=0)
