from .lenet import LeNet, lenet_mnist
