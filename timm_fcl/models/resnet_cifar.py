"""The CIFAR ResNets of He et al. (2016, section 4.2), the paper's CIFAR model (Appendix B: ResNet-56, blocks
(n_layer, n_filter, stride) = [(9, 16, 1), (9, 32, 2), (9, 64, 2)]), registered in timm as ``resnet56_cifar``
(and the 20-layer ``resnet20_cifar``). timm's own ResNets have an ImageNet stem (7x7 stride 2 + max-pool) and four
stages, which would reduce a 32x32 image to 1x1.

forward_features: 3x3 conv(16) + BN + ReLU, then 3 stages of basic blocks -> [B, 64, 8, 8];
forward_head: global average pool (the embedding phi, ``head_hidden_size`` = 64) -> Linear(64, classes).
A block that changes width or stride has a 1x1 conv + BN shortcut (He et al.'s option B).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .zoo import with_zoo_weights


class BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)) + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 56, num_classes: int = 10, in_chans: int = 3, widths=(16, 32, 64),
                 drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.num_features = self.head_hidden_size = widths[-1]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_chs = [], widths[0]
        for i, width in enumerate(widths):
            stage = [BasicBlock(in_chs if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1)
                     for j in range(blocks)]
            stages.append(nn.Sequential(*stage))
            in_chs = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(F.relu(self.bn1(self.conv1(x))))       # [B, 64, H/4, W/4]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))                                     # [B, 64]
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return {"num_classes": 10, "input_size": (3, 32, 32), "pool_size": (8, 8), "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
            "first_conv": "conv1", "classifier": "fc", **kwargs}


# The robust checkpoint zoo (zoo/ in the repository, benchmarks/cifar_robustness.py trains it): one Hugging Face
# organisation holds one repository per tag, so timm.create_model("resnet20_cifar.fcl_cifar10", pretrained=True)
# downloads it; when the Hub copy cannot be had, the copy installed with timm-fcl is loaded (models/zoo.py). The
# untrained config stays each architecture's default (the "*").
HUB_ORG = "timm-fcl"
ZOO_TAGS = ("fcl_cifar10", "xe_cifar10", "pg_fcl_cifar10", "xe_pretrain_cifar10")


def _zoo_cfgs(arch: str) -> dict:
    return {f"{arch}.{tag}": _cfg(hf_hub_id=f"{HUB_ORG}/{arch}.{tag}", license="apache-2.0") for tag in ZOO_TAGS}


# timm makes the first tag with weights the default unless a later "*" tag claims it, so the zoo's tags come first
default_cfgs = generate_default_cfgs({**_zoo_cfgs("resnet20_cifar"), "resnet20_cifar.untrained*": _cfg(),
                                      **_zoo_cfgs("resnet56_cifar"), "resnet56_cifar.untrained*": _cfg()})


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    kwargs = with_zoo_weights("resnet20_cifar", HUB_ORG, kwargs) if pretrained else kwargs
    return build_model_with_cfg(CifarResNet, "resnet20_cifar", pretrained, **dict(dict(depth=20), **kwargs))


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    kwargs = with_zoo_weights("resnet56_cifar", HUB_ORG, kwargs) if pretrained else kwargs
    return build_model_with_cfg(CifarResNet, "resnet56_cifar", pretrained, **dict(dict(depth=56), **kwargs))
