from .lenet import LeNet, lenet_mnist
from .resnet_cifar import CifarResNet, resnet20_cifar, resnet56_cifar
