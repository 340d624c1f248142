"""fmnist-exp: Fashion-MNIST experiments on PyTorch Lightning + Hydra + MLflow."""

__version__ = "0.1.0"
