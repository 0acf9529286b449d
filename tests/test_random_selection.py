"""FCL with ``selection="random"``: the control for the utility. BOTTOM_k / TOP_k are two disjoint uniformly random sets
of k elements, no input gradient is taken, and everything else (noise, loss, scaling, schedule) is Algorithm 1's."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import timm_fcl.regularizer as regularizer_module
from timm_fcl import FCLConfig, FeatureContrastiveRegularizer, embedding, fcl_loss
from timm_fcl.perturbations import perturbed_batch, random_scores, utility_perturbations

from conftest import create


def _naive_random_sets(x: torch.Tensor, k: int, generator: torch.Generator):
    """The reference: per sample, rank the elements by uniform draws; the k lowest ranks are BOTTOM_k (lowest first),
    the k highest TOP_k (highest first: the j-th noise draw goes to the j-th element of each list). A sort, not topk."""
    b = x.shape[0]
    order = torch.rand((b, x[0].numel()), generator=generator).argsort(dim=1)
    return order[:, :k], order[:, -k:].flip(1)


def test_random_scores_rank_every_element_once_and_select_disjoint_sets_of_k(cifar_like):
    x = cifar_like[0][:6]
    scores = random_scores(x, torch.Generator().manual_seed(3))
    d = x[0].numel()
    assert scores.shape == x.shape
    assert torch.equal(scores.reshape(6, -1).sort(dim=1).values, torch.arange(d).float().expand(6, d))
    k = 200
    x_low, x_high = utility_perturbations(x, scores, k, 0.5, torch.Generator().manual_seed(4))
    low, high = _naive_random_sets(x, k, torch.Generator().manual_seed(3))
    for i in range(6):
        changed_low = ((x_low[i] - x[i]).reshape(-1) != 0).nonzero().flatten()
        changed_high = ((x_high[i] - x[i]).reshape(-1) != 0).nonzero().flatten()
        assert torch.equal(changed_low, low[i].sort().values) and torch.equal(changed_high, high[i].sort().values)
        assert len(changed_low) == len(changed_high) == k
        assert not set(changed_low.tolist()) & set(changed_high.tolist())


def test_random_sets_are_uniform_over_elements_and_samples():
    x = torch.zeros(400, 1, 4, 5)  # 20 elements, k 5: each element lands in TOP_k with probability 1/4
    scores = random_scores(x, torch.Generator().manual_seed(0)).reshape(400, -1)
    top = scores >= 20 - 5
    freq = top.float().mean(0)
    # binomial(400, 0.25) per element: std 0.0217; 5 std is a bound that a non-uniform choice breaks
    assert (freq - 0.25).abs().max() < 5 * math.sqrt(0.25 * 0.75 / 400)
    assert not torch.equal(scores[0], scores[1])  # each sample draws its own sets


def test_random_fcl_term_equals_the_naive_reference_and_takes_no_input_gradient(mnist_like, monkeypatch):
    x, y = mnist_like[0][:12], mnist_like[1][:12]
    model = create("lenet_mnist").train()
    cfg = FCLConfig(k=100, sigma=0.5, tau=0.2, weight=0.01, selection="random")
    reg = FeatureContrastiveRegularizer(model, cfg).train()

    def no_gradient(*args, **kwargs):
        raise AssertionError("an input gradient was taken in random mode")

    monkeypatch.setattr(regularizer_module, "utility_from_loss", no_gradient)
    seen = []
    real_forward = model.forward_features
    monkeypatch.setattr(model, "forward_features", lambda t: seen.append(t.requires_grad) or real_forward(t))
    out = reg(x, y, step=0, generator=torch.Generator().manual_seed(5))
    assert seen and not any(seen)  # no pass ran on an input that requires grad

    g = torch.Generator().manual_seed(5)  # the same stream: the scores first, then the noise
    low, high = _naive_random_sets(x, cfg.k, g)
    noise = torch.randn((2, 12, cfg.k), generator=g)
    x_low, x_high = x.reshape(12, -1).clone(), x.reshape(12, -1).clone()
    for i in range(12):
        x_low[i, low[i]] += cfg.sigma * noise[0, i]
        x_high[i, high[i]] += cfg.sigma * noise[1, i]
    with torch.no_grad():
        want = fcl_loss(embedding(model, x), embedding(model, x_low.view_as(x)), embedding(model, x_high.view_as(x)),
                        tau=cfg.tau)
    torch.testing.assert_close(out.fcl, want)
    torch.testing.assert_close(out.loss.detach(), F.cross_entropy(model(x), y).detach() + 0.01 * 12 * want)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_random_mode_keeps_every_negative_and_on_a_fraction_skips_the_subset_utility(mnist_like, monkeypatch):
    x, y = mnist_like[0][:16], mnist_like[1][:16]
    model = create("lenet_mnist").train()
    calls = []
    real = regularizer_module.fcl_loss
    monkeypatch.setattr(regularizer_module, "fcl_loss", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    monkeypatch.setattr(FeatureContrastiveRegularizer, "_subset_utility",
                        lambda *a: pytest.fail("the subset's utility was computed in random mode"))
    reg = FeatureContrastiveRegularizer(model, FCLConfig(k=50, selection="random", fraction=0.5,
                                                         min_utility=1e9)).train()
    out = reg(x, y, generator=torch.Generator().manual_seed(1))
    assert calls[-1]["neg_mask"] is None  # min_utility has no utility to test: every sample keeps x-
    assert calls[-1]["anchor_index"].numel() == 8 and torch.isfinite(out.loss)


def test_random_mode_is_reproducible_and_resumes_the_same_stream(cifar_like):
    x, y = cifar_like[0][:8], cifar_like[1][:8]
    reg = FeatureContrastiveRegularizer(create("resnet18"), FCLConfig(k=64, selection="random")).train()
    g = torch.Generator().manual_seed(7)
    first = reg(x, y, generator=g).fcl
    saved = g.get_state()
    second = reg(x, y, generator=g).fcl
    resumed = torch.Generator()
    resumed.set_state(saved)
    assert torch.equal(reg(x, y, generator=resumed).fcl, second)
    assert not torch.equal(first, second)  # new sets and noise each step


def test_selection_is_validated():
    with pytest.raises(ValueError, match="unknown selection"):
        FCLConfig(selection="lowest")
    cfg = FCLConfig(k=300, selection="random")
    cfg.check_input((1, 28, 28), 8)  # 2 x 300 <= 784
    with pytest.raises(ValueError, match="two disjoint sets"):
        FCLConfig(k=400, selection="random").check_input((1, 28, 28), 8)
    FCLConfig(k=400).check_input((1, 28, 28), 8)  # the utility's sets may overlap


def test_utility_mode_is_unchanged_by_the_option(mnist_like):
    x, y = mnist_like[0][:8], mnist_like[1][:8]
    model = create("lenet_mnist").train()
    reg = FeatureContrastiveRegularizer(model, FCLConfig(k=100)).train()
    out = reg(x, y, generator=torch.Generator().manual_seed(2))
    from timm_fcl import contextual_utility
    u = contextual_utility(model, x, y)
    both = perturbed_batch(x, u, 100, 0.5, torch.Generator().manual_seed(2))
    with torch.no_grad():
        z_pos, z_neg = embedding(model, both).chunk(2)
        want = fcl_loss(embedding(model, x), z_pos, z_neg, tau=0.1)
    torch.testing.assert_close(out.fcl, want)


def test_train_fcl_random_selection_resumes_bit_identically_and_logs_the_pull(toy, tmp_path):
    import csv
    import signal

    from test_preemption import TOY, _same, _signal_at, _stopped_line
    from train_helpers import run, train_cmd, trained_run

    flags = [*TOY, "--fcl-selection", "random"]
    straight = trained_run(tmp_path / "straight", toy, flags)
    utility = trained_run(tmp_path / "utility", toy, TOY)
    assert not _same(straight, utility)  # the option reaches the regularizer
    rows = list(csv.DictReader(open(straight / "summary.csv")))
    assert all(float(r["train_pull"]) > 0 for r in rows)

    out = tmp_path / "stopped"
    cmd = train_cmd(*flags, "--data-dir", str(toy), "--output", str(out))
    stopped = _signal_at(cmd, signal.SIGTERM, after_step=3)
    _stopped_line(stopped, "SIGTERM")
    assert " pull " in stopped.stderr  # every log line (one per step here) carries the ratio
    resumed = run(cmd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _same(straight, out)  # the scores and the noise came from the same stream after the resume
