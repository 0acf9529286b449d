"""timm_fcl.models.lenet: the paper's MNIST model, registered in timm."""
import timm
import torch

from timm_fcl import LeNet


def test_lenet_is_a_timm_model():
    model = timm.create_model("lenet_mnist", num_classes=15)
    assert isinstance(model, LeNet) and model.head_hidden_size == 128
    assert model.pretrained_cfg["input_size"] == (1, 28, 28)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), model.forward_head(model.forward_features(x)))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
