"""The cheaper and leaner ways of running the regularizer: FCL on every n-th step, on a fraction of the
batch, the perturbed pass in checkpointed chunks, channels_last. Each is compared with a reference built from the
public functions or with the plain path."""
import copy

import pytest
import torch
import torch.nn.functional as F

from timm_fcl import FCLConfig, FeatureContrastiveRegularizer, contextual_utility, embedding, fcl_loss
from timm_fcl.batchnorm import frozen_bn_stats
from timm_fcl.perturbations import gaussian_perturbation, perturbed_batch, utility_perturbations
from conftest import create


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def count_calls(module):
    calls = {"fwd": 0, "bwd": 0}
    module.register_forward_hook(lambda *a: calls.__setitem__("fwd", calls["fwd"] + 1))
    module.register_full_backward_pre_hook(lambda *a: calls.__setitem__("bwd", calls["bwd"] + 1))
    return calls


# ------------------------------------------------------------------------------------------------------------ every
def test_every_nth_step_carries_the_scaled_term_and_the_others_are_plain_xe_steps(cifar_like):
    x, y = cifar_like[0][:8], cifar_like[1][:8]
    cfg = FCLConfig(k=64, weight=0.01, every=3, start_step=1)
    on_steps = []
    for step in range(6):
        model = create("resnet18").train()
        ref = copy.deepcopy(model)
        calls = count_calls(model.conv1)
        reg = FeatureContrastiveRegularizer(model, cfg).train()
        opt = torch.optim.SGD(reg.parameters(), lr=0.1, momentum=0.9)
        out = reg(x, y, step=step, generator=torch.Generator().manual_seed(step))
        if out.weight:
            on_steps.append(step)
            # the term of an every-step run at this step, with lambda times 3
            every1 = FeatureContrastiveRegularizer(ref, FCLConfig(k=64, weight=0.01, start_step=1)).train()
            want = every1(x, y, step=step, generator=torch.Generator().manual_seed(step))
            assert out.weight == pytest.approx(3 * 0.01) and want.weight == pytest.approx(0.01)
            assert out.fcl > 0
            torch.testing.assert_close(out.fcl, want.fcl, rtol=0, atol=0)
            torch.testing.assert_close(out.loss, want.ce + 3 * 0.01 * 8 * want.fcl)
            continue
        out.loss.backward()
        opt.step()
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
        F.cross_entropy(ref(x), y).backward()
        ref_opt.step()
        assert out.fcl.item() == 0.0 and calls == {"fwd": 1, "bwd": 1}
        for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
            assert torch.equal(a, b), (step, k)
    assert on_steps == [1, 4]


def test_every_scales_the_ramp_too():
    from timm_fcl.schedule import scheduled_weight, step_weight
    cfg = FCLConfig(weight=0.1, every=2, start_step=4, ramp_steps=4)
    assert [step_weight(cfg, s) for s in range(3, 11)] == pytest.approx([0, 0.05, 0, 0.15, 0, 0.2, 0, 0.2])
    assert [scheduled_weight(cfg, s) for s in range(3, 11)] == pytest.approx([0, .025, .05, .075, .1, .1, .1, .1])
    # the output carries the schedule's lambda on every step, the factor only on the steps that carry the term
    reg = FeatureContrastiveRegularizer(create("lenet5_mnist"), FCLConfig(weight=0.1, every=2, start_step=1, k=8))
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    outs = [reg(x, y, step=s) for s in (0, 1, 2)]
    assert [o.scheduled_weight for o in outs] == pytest.approx([0, 0.1, 0.1])
    assert [o.weight for o in outs] == pytest.approx([0, 0.2, 0])


# --------------------------------------------------------------------------------------------------------- fraction
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_fraction_equals_the_subset_reference_with_full_batch_negatives(cifar_like, reduction):
    x, y = cifar_like[0][:16], cifar_like[1][:16]
    model = create("resnet18").train()
    clean_only = copy.deepcopy(model)
    clean_only(x)
    cfg = FCLConfig(k=64, sigma=0.5, tau=0.3, weight=0.01, fraction=0.25, reduction=reduction)
    reg = FeatureContrastiveRegularizer(model, cfg).train()
    out = reg(x, y, generator=torch.Generator().manual_seed(4))
    assert all(p.grad is None for p in model.parameters())  # the subset's utility pass took input gradients only

    # Reference from the public functions: subset from the generator, its utility from its own pass (train-mode
    # BatchNorm with the subset's statistics), perturbations with the same generator, anchors from the clean z.
    g = torch.Generator().manual_seed(4)
    idx = torch.randperm(16, generator=g)[:4]
    with frozen_bn_stats(model):
        u = contextual_utility(model, x[idx], y[idx])
        x_low, x_high = utility_perturbations(x[idx], u, 64, 0.5, g)
        z_pos, z_neg = embedding(model, torch.cat([x_low, x_high])).chunk(2)
        z = embedding(model, x)
        ce = F.cross_entropy(model(x), y)
    want = fcl_loss(z, z_pos, z_neg, tau=0.3, anchor_index=idx)
    torch.testing.assert_close(out.fcl, want.detach())
    scale = 16 if reduction == "sum" else 1  # the subset mean estimates the whole batch's term
    assert out.scale == scale
    torch.testing.assert_close(out.loss, ce + 0.01 * scale * want)
    # the subset alone is not the reference: the negatives are all 15 other clean embeddings
    assert not torch.allclose(fcl_loss(z[idx], z_pos, z_neg, tau=0.3), want)

    out.loss.backward()
    after = bn_state(model)
    for k, v in bn_state(clean_only).items():
        assert torch.equal(after[k], v), k


@pytest.mark.parametrize("method", ["xe_gauss", "cl_gauss"])
def test_fraction_of_the_baselines(method, mnist_like):
    x, y = mnist_like[0][:12], mnist_like[1][:12]
    model = create("lenet5_mnist").train()
    cfg = FCLConfig(method=method, sigma=0.3, tau=0.5, weight=0.2, fraction=0.5)
    out = FeatureContrastiveRegularizer(model, cfg)(x, y, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    idx = torch.randperm(12, generator=g)[:6]
    x_noisy = gaussian_perturbation(x[idx], 0.3, g)
    if method == "xe_gauss":
        want = F.cross_entropy(model(x_noisy), y[idx])
    else:
        want = fcl_loss(embedding(model, x), embedding(model, x_noisy), None, tau=0.5, anchor_index=idx)
    torch.testing.assert_close(out.fcl, want.detach())


def test_fraction_that_rounds_to_the_whole_batch_is_the_full_path(mnist_like):
    x, y = mnist_like[0][:16], mnist_like[1][:16]
    model = create("lenet5_mnist").train()
    outs = [FeatureContrastiveRegularizer(model, FCLConfig(k=50, weight=0.1, fraction=f))(
        x, y, generator=torch.Generator().manual_seed(0)) for f in (1.0, 0.98)]  # round(0.98 * 16) = 16
    assert torch.equal(outs[0].loss, outs[1].loss) and torch.equal(outs[0].fcl, outs[1].fcl)
    reg = FeatureContrastiveRegularizer(model, FCLConfig(fraction=0.01))
    assert reg.subset_size(16) == 1 and reg.subset_size(100) == 1 and reg.subset_size(1000) == 10


def test_modes_are_validated():
    for bad in (dict(every=0), dict(every=1.5), dict(fraction=0.0), dict(fraction=1.2), dict(perturbed_chunks=0)):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            FCLConfig(**bad)


# ----------------------------------------------------------------------------------------------- perturbed_chunks
@pytest.mark.parametrize("name,method", [("lenet5_mnist", "fcl"), ("lenet5_mnist", "xe_gauss"),
                                         ("vit_tiny_patch16_224", "fcl")])
def test_chunked_perturbed_pass_gives_the_same_loss_and_gradients(name, method, cifar_like, mnist_like):
    x, y = (mnist_like if name.startswith("lenet") else cifar_like)
    x, y = x[:10], y[:10]
    grads, losses = [], []
    for chunks in (1, 3):
        model = create(name).train()
        reg = FeatureContrastiveRegularizer(model, FCLConfig(method=method, k=50, weight=0.1,
                                                             perturbed_chunks=chunks))
        out = reg(x, y, generator=torch.Generator().manual_seed(1))
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(losses[0], losses[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_chunks_are_checkpointed_and_leave_batchnorm_stats_alone(cifar_like):
    x, y = cifar_like[0][:8], cifar_like[1][:8]
    saved = {}
    for chunks in (1, 4):
        model = create("resnet18").train()
        clean_only = copy.deepcopy(model)
        clean_only(x)
        calls = count_calls(model.conv1)
        reg = FeatureContrastiveRegularizer(model, FCLConfig(k=64, weight=0.1, perturbed_chunks=chunks))
        nbytes = []

        def pack(t):
            nbytes.append(t.numel() * t.element_size())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = reg(x, y, generator=torch.Generator().manual_seed(0))
        saved[chunks] = sum(nbytes)
        out.loss.backward()  # recomputes each chunk outside the forward's frozen_bn_stats block
        # clean pass + perturbed pass (+ one recomputation per chunk in backward)
        assert calls["fwd"] == (2 if chunks == 1 else 1 + 2 * chunks)
        after = bn_state(model)
        for k, v in bn_state(clean_only).items():
            assert torch.equal(after[k], v), (chunks, k)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # the forward keeps the clean pass's activations but none of the perturbed pass's
    assert saved[4] < 0.5 * saved[1], saved


# ----------------------------------------------------------------------------------------------------- channels_last
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_channels_last_fcl_step_matches_the_contiguous_one(fraction, cifar_subset):
    # real images: on the fake ones, rounding differences of the channels-last convolutions move near-tied utilities
    # across the TOP_k boundary
    x, y = cifar_subset[0][:8], cifar_subset[1][:8]
    results = []
    for channels_last in (False, True):
        model = create("resnet18").train()
        xs = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            xs = x.contiguous(memory_format=torch.channels_last)
        reg = FeatureContrastiveRegularizer(model, FCLConfig(k=64, weight=0.1, fraction=fraction))
        out = reg(xs, y, generator=torch.Generator().manual_seed(0))
        out.loss.backward()
        if channels_last:
            assert model.conv1.weight.grad.is_contiguous(memory_format=torch.channels_last)
        results.append((out.loss.detach(), out.fcl, [p.grad for p in model.parameters()]))
    (la, fa, ga), (lb, fb, gb) = results
    assert fa > 0
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-5)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------------------------------------- torch.compile
def compiled_vs_eager(name, x, y, steps, monkeypatch, **cfg):
    # The utility of the compiled graph differs from the eager one by float rounding; that can swap which of two nearly
    # equal lowest utilities is perturbed (TOP_k / BOTTOM_k are discontinuous). So the utilities are compared, and the
    # loss and gradients with sigma = 0 (the perturbation then leaves x as it is whichever elements are chosen).
    import timm_fcl.regularizer
    utilities = []

    def spy(x, utility, *args, **kwargs):
        utilities.append(utility)
        return perturbed_batch(x, utility, *args, **kwargs)
    monkeypatch.setattr(timm_fcl.regularizer, "perturbed_batch", spy)
    import torch._functorch.config
    donated = torch._functorch.config.donated_buffer
    results = []
    for backend in (None, "inductor"):
        model = create(name).train()
        reg = FeatureContrastiveRegularizer(model, FCLConfig(sigma=0.0, **cfg), compile_backend=backend)
        for step in range(steps):
            model.zero_grad()
            out = reg(x, y, step=step, generator=torch.Generator().manual_seed(step))
            out.loss.backward()
        results.append((out, [p.grad for p in model.parameters()], [b.clone() for b in model.buffers()]))
    # the double backward needs graphs compiled without donated buffers; the process-wide setting is left as it was
    assert torch._functorch.config.donated_buffer == donated
    (a, ga, ba), (b, gb, bb) = results
    assert a.weight > 0 and a.fcl > 0 and len(utilities) == 2 * steps
    for u, v in zip(utilities[:steps], utilities[steps:]):
        assert u.abs().max() > 0
        torch.testing.assert_close(u, v, rtol=0, atol=1e-4 * u.abs().max().item())
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.fcl, b.fcl)
    for u, v in zip(ga + ba, gb + bb):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_compiled_fcl_step_equals_the_eager_one(fraction, mnist_like, monkeypatch):
    # two steps: the second reuses graphs whose first backward was the final (not the utility's) one
    compiled_vs_eager("lenet5_mnist", mnist_like[0][:12], mnist_like[1][:12], 2, monkeypatch, k=50, weight=0.1,
                      fraction=fraction)


@pytest.mark.slow
def test_compiled_batchnorm_model_equals_the_eager_one(cifar_like, monkeypatch):
    # minutes of compilation on a CPU: BatchNorm's running statistics and the frozen passes under torch.compile
    compiled_vs_eager("resnet18", cifar_like[0][:8], cifar_like[1][:8], 2, monkeypatch, k=64, weight=0.1,
                      fraction=0.5)
