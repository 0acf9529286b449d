"""resnet56_cifar: the paper's CIFAR model (Appendix B), as He et al. (2016, section 4.2) built it."""
import pytest
import timm
import torch

import timm_fcl
from timm_fcl import FCLConfig, FeatureContrastiveRegularizer


@pytest.mark.parametrize("name, depth, params", [("resnet20_cifar", 20, 0.27e6), ("resnet56_cifar", 56, 0.85e6)])
def test_depth_width_and_size_match_he_et_al(name, depth, params):
    model = timm.create_model(name, num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 6n + 1 3x3 convs plus the classifier
    assert [c.out_channels for c in convs[:1] + convs[-1:]] == [16, 64]
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.02)  # paper table 6
    assert model.forward_features(torch.zeros(2, 3, 32, 32)).shape == (2, 64, 8, 8)


def test_embedding_feeds_the_classifier_and_fcl_trains_every_parameter():
    model = timm.create_model("resnet20_cifar", num_classes=10).eval()
    x = torch.rand(4, 3, 32, 32)
    f = model.forward_features(x)
    assert torch.allclose(model.get_classifier()(model.forward_head(f, pre_logits=True)), model(x), atol=1e-6)
    reg = FeatureContrastiveRegularizer(model, FCLConfig(k=64, weight=1.0)).train()
    out = reg(x, torch.tensor([0, 1, 2, 3]), step=1)
    out.loss.backward()
    assert out.fcl > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
