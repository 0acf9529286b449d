import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_fcl
from timm_fcl import FCLConfig, FeatureContrastiveRegularizer, contextual_utility, embedding, fcl_loss
from timm_fcl.heads import head_mode
from timm_fcl.perturbations import gaussian_perturbation, utility_perturbations
from conftest import FAMILIES, create

def data_for(name, cifar_like, mnist_like):
    return mnist_like if name.startswith("lenet") else cifar_like


@pytest.mark.parametrize("name", list(FAMILIES))
def test_fcl_trains_every_family(name, cifar_like, mnist_like):
    x_all, y_all = data_for(name, cifar_like, mnist_like)
    model = create(name)
    reg = FeatureContrastiveRegularizer(model, FCLConfig(k=64, sigma=0.5, tau=0.5, weight=0.1)).train()
    opt = torch.optim.Adam(reg.parameters(), lr=1e-3)
    losses = []
    for step in range(30):
        i = (step % 4) * 8  # 4 batches of 8 images, seen 7.5 times
        out = reg(x_all[i:i + 8], y_all[i:i + 8], step=step)
        assert out.weight == 0.1 and torch.isfinite(out.loss) and out.fcl > 0
        assert out.logits.shape == (8, 10)
        opt.zero_grad()
        out.loss.backward()
        if step == 0:
            missing = [n for n, p in reg.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, f"no gradient for {missing}"
            assert all(torch.isfinite(p.grad).all() for p in reg.parameters() if p.grad is not None)
        opt.step()
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("name", list(FAMILIES))
def test_embedding_width_and_logits_equal_the_models_head(name):
    model = create(name)
    reg = FeatureContrastiveRegularizer(model)
    lenet = name.startswith("lenet")
    x = torch.rand(3, 1 if lenet else 3, *((28, 28) if lenet else (32, 32)))
    for train in (True, False):
        model.train(train)
        f = model.forward_features(x)
        with timm_fcl.batchnorm.frozen_bn_stats(model):
            logits, z = reg._logits_and_embedding(f)
            assert z.shape == (3, model.head_hidden_size)
            torch.testing.assert_close(z, model.forward_head(f, pre_logits=True), rtol=0, atol=0)
            torch.testing.assert_close(logits, model.forward_head(f), rtol=1e-6, atol=1e-6)
    if name == "deit_tiny_distilled_patch16_224":
        assert reg.head_mode == "separate"


def test_head_dropout_uses_the_models_own_head_call():
    assert head_mode(create("resnet18")) == "linear"
    assert head_mode(create("resnet18", drop_rate=0.3)) == "separate"
    assert head_mode(create("resnetv2_18")) == "conv"


def plain_xe_step(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("method", ["xe", "fcl", "xe_gauss", "cl_gauss"])
def test_weight_zero_step_is_a_plain_xe_step(method, cifar_like):
    x, y = cifar_like[0][:8], cifar_like[1][:8]
    model = create("resnet18").train()
    ref = copy.deepcopy(model)
    plain_xe_step(ref, x, y)

    calls = {"fwd": 0, "bwd": 0}
    first = model.conv1
    first.register_forward_hook(lambda *a: calls.__setitem__("fwd", calls["fwd"] + 1))
    first.register_full_backward_pre_hook(lambda *a: calls.__setitem__("bwd", calls["bwd"] + 1))
    reg = FeatureContrastiveRegularizer(model, FCLConfig(method=method, start_step=5)).train()
    opt = torch.optim.SGD(reg.parameters(), lr=0.1, momentum=0.9)
    out = reg(x, y, step=4)
    out.loss.backward()
    opt.step()
    assert out.weight == 0.0 and calls == {"fwd": 1, "bwd": 1}
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_fcl_step_keeps_batchnorm_stats_of_the_clean_pass(cifar_like):
    x, y = cifar_like[0][:8], cifar_like[1][:8]
    for method in ("fcl", "xe_gauss", "cl_gauss"):
        model = create("resnet18").train()
        ref = copy.deepcopy(model)
        ref(x)  # the clean pass alone
        reg = FeatureContrastiveRegularizer(model, FCLConfig(method=method, k=64, weight=0.5)).train()
        out = reg(x, y, step=0)
        out.loss.backward()
        bn = [k for k in ref.state_dict() if "running" in k or "num_batches" in k]
        assert bn
        for k in bn:
            assert torch.equal(model.state_dict()[k], ref.state_dict()[k]), (method, k)


def test_fcl_term_equals_algorithm_1_assembled_from_the_public_functions(mnist_like):
    x, y = mnist_like[0][:12], mnist_like[1][:12]
    model = create("lenet_mnist").train()
    cfg = FCLConfig(k=100, sigma=0.5, tau=0.2, weight=0.01, start_step=2, ramp_steps=4)
    reg = FeatureContrastiveRegularizer(model, cfg).train()
    out = reg(x, y, step=3, generator=torch.Generator().manual_seed(5))
    u = contextual_utility(model, x, y)
    x_low, x_high = utility_perturbations(x, u, cfg.k, cfg.sigma, torch.Generator().manual_seed(5))
    want = fcl_loss(embedding(model, x), embedding(model, x_low), embedding(model, x_high), tau=cfg.tau)
    ce = F.cross_entropy(model(x), y)
    assert out.weight == pytest.approx(0.01 * 2 / 4)
    torch.testing.assert_close(out.fcl, want.detach())
    # Algorithm 1: l_FCL is the sum over the batch of the per-sample terms, beside the mean cross-entropy
    # (fcl_loss returns the mean over the 12 samples)
    assert out.scale == 12
    torch.testing.assert_close(out.loss, ce + out.weight * 12 * want)


def test_reduction_mean_weighs_one_sample_and_sum_the_batch(mnist_like):
    x, y = mnist_like[0][:10], mnist_like[1][:10]
    model = create("lenet_mnist").train()
    outs = {}
    for reduction in ("sum", "mean"):
        cfg = FCLConfig(k=60, weight=0.01, reduction=reduction)
        outs[reduction] = FeatureContrastiveRegularizer(model, cfg)(x, y, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(outs["sum"].fcl, outs["mean"].fcl)
    torch.testing.assert_close(outs["mean"].loss, outs["mean"].ce + 0.01 * outs["mean"].fcl)
    torch.testing.assert_close(outs["sum"].loss - outs["sum"].ce, 10 * (outs["mean"].loss - outs["mean"].ce))
    with pytest.raises(ValueError, match="reduction"):
        FCLConfig(reduction="max")


def test_world_size_from_the_caller_scales_the_sum_over_the_global_batch(mnist_like):
    # lambda weighs the sum over the global batch: with 3 processes averaging gradients, each local loss carries the
    # term times 3 x the local batch; the caller says how many processes there are, no process group is read
    x, y = mnist_like[0][:10], mnist_like[1][:10]
    model = create("lenet_mnist").train()
    cfg = FCLConfig(k=60, weight=0.01)
    outs = {world: FeatureContrastiveRegularizer(model, cfg, world_size=world)(
        x, y, generator=torch.Generator().manual_seed(3), group_size=2) for world in (None, 1, 3)}
    assert not torch.distributed.is_initialized()
    assert (outs[None].scale, outs[1].scale, outs[3].scale) == (20, 20, 60)
    torch.testing.assert_close(outs[3].loss - outs[3].ce, 3 * (outs[1].loss - outs[1].ce))
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="world_size"):
            FeatureContrastiveRegularizer(model, cfg, world_size=bad)


def test_baselines_equal_their_definitions(mnist_like):
    x, y = mnist_like[0][:12], mnist_like[1][:12]
    model = create("lenet_mnist").train()
    for method in ("xe_gauss", "cl_gauss"):
        cfg = FCLConfig(method=method, sigma=0.3, tau=0.5, weight=0.2)
        out = FeatureContrastiveRegularizer(model, cfg)(x, y, generator=torch.Generator().manual_seed(9))
        x_noisy = gaussian_perturbation(x, 0.3, torch.Generator().manual_seed(9))
        if method == "xe_gauss":
            want = F.cross_entropy(model(x_noisy), y)
        else:
            want = fcl_loss(embedding(model, x), embedding(model, x_noisy), None, tau=0.5)
        torch.testing.assert_close(out.fcl, want.detach())


def test_low_utility_guard_drops_the_high_utility_negative(mnist_like):
    x, y = mnist_like[0][:6], mnist_like[1][:6]
    model = create("lenet_mnist").train()
    cfg = FCLConfig(k=50, min_utility=1e9)  # every sample below the guard
    out = FeatureContrastiveRegularizer(model, cfg)(x, y, generator=torch.Generator().manual_seed(1))
    u = contextual_utility(model, x, y)
    x_low, _ = utility_perturbations(x, u, 50, 0.5, torch.Generator().manual_seed(1))
    want = fcl_loss(embedding(model, x), embedding(model, x_low), embedding(model, x_low),
                    tau=cfg.tau, neg_mask=torch.zeros(6, dtype=torch.bool))
    torch.testing.assert_close(out.fcl, want.detach())


def test_eval_mode_computes_only_the_clean_loss(mnist_like):
    x, y = mnist_like[0][:4], mnist_like[1][:4]
    reg = FeatureContrastiveRegularizer(create("lenet_mnist")).eval()
    out = reg(x, y, step=100)
    assert out.weight == 0.0 and out.fcl.item() == 0.0
    torch.testing.assert_close(out.loss, F.cross_entropy(reg.model(x), y))


def test_bfloat16_autocast_on_cpu(cifar_like):
    x, y = cifar_like[0][:8], cifar_like[1][:8]
    reg = FeatureContrastiveRegularizer(create("resnet18"), FCLConfig(k=64, weight=0.1)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = reg(x, y)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss) and out.fcl > 0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in reg.parameters())


def test_bad_config_and_models_are_refused():
    with pytest.raises(ValueError, match="unknown FCL method"):
        FCLConfig(method="fcl2")
    with pytest.raises(ValueError, match="variant"):
        FCLConfig(variant="hinge")
    with pytest.raises(ValueError, match="num_classes"):
        FeatureContrastiveRegularizer(timm.create_model("resnet18", num_classes=0))
    with pytest.raises(TypeError, match="forward_features"):
        FeatureContrastiveRegularizer(torch.nn.Linear(3, 3))
