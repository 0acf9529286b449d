"""A LeNet-like CNN (LeCun et al., 1989) for 28x28 grey images, the model of the synthetic MNIST experiment
(paper section 4.1), registered in timm's model registry as ``lenet_mnist``.

forward_features: two 5x5 conv + ReLU + 2x2 max-pool stages -> [B, 64, 7, 7];
forward_head: flatten -> Linear(3136, 128) + ReLU (the embedding phi, ``head_hidden_size`` = 128) -> Linear(128, classes).

``lenet5_mnist`` is the same net at LeNet-5's widths (6 and 16 channels, a 120-wide embedding): about 20 times fewer
multiply-adds, which is what lets the synthetic MNIST benchmark run its seeds on a CPU.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model


class LeNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, embed_dim: int = 128, drop_rate: float = 0.0,
                 global_pool: str = "", channels: tuple[int, int] = (32, 64)):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = channels[1]
        self.head_hidden_size = embed_dim
        self.conv1 = nn.Conv2d(in_chans, channels[0], 5, padding=2)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 5, padding=2)
        self.pre_logits = nn.Linear(channels[1] * 7 * 7, embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str = "") -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)                   # [B, 32, 14, 14]
        return F.max_pool2d(F.relu(self.conv2(x)), 2)                # [B, 64, 7, 7] (lenet5: 6 and 16 channels)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.relu(self.pre_logits(x.flatten(1)))                    # [B, 128]
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_CFG = {"num_classes": 10, "input_size": (1, 28, 28), "pool_size": None, "crop_pct": 1.0, "interpolation": "bilinear",
        "mean": (0.0,), "std": (1.0,), "first_conv": "conv1", "classifier": "head"}
default_cfgs = generate_default_cfgs({"lenet_mnist.untrained": dict(_CFG), "lenet5_mnist.untrained": dict(_CFG)})


@register_model
def lenet_mnist(pretrained: bool = False, **kwargs) -> LeNet:
    return build_model_with_cfg(LeNet, "lenet_mnist", pretrained, **kwargs)


@register_model
def lenet5_mnist(pretrained: bool = False, **kwargs) -> LeNet:
    kwargs = {"channels": (6, 16), "embed_dim": 120, **kwargs}
    return build_model_with_cfg(LeNet, "lenet5_mnist", pretrained, **kwargs)
