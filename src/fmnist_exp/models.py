"""The networks: plain nn.Modules named for what they are. They take normalised images [N, 1, 28, 28]
and return logits [N, 10]; the Classifier adds normalisation and training around them.

Shape errors are checked here, before any training, and name the config key to change.
"""

from collections.abc import Sequence

import torch
from torch import nn

from fmnist_exp.checks import is_number, is_whole
from fmnist_exp.errors import ConfigError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation={name!r} is not one of {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def _pair(value: int | Sequence[int], key: str, double: bool) -> list[int]:
    """An int -> [v, 2v] (channels) or [v, v] (kernels); a list of two is taken as is."""

    whole = is_whole  # True/False and 16.0 are not channel counts
    if isinstance(value, (int, float, bool)):
        values = [value, value * 2 if double else value] if whole(value) else [value]
    else:
        values = (
            list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        )
    if len(values) != 2 or not all(whole(v) for v in values):
        raise ConfigError(
            f"{key}={value!r} must be a positive int or a list of two positive ints (one per conv)."
        )
    return values


class FlipAveraged(nn.Module):
    """Test-time augmentation: in eval mode, the mean of the logits for x and its mirror image.
    Training is untouched. It sits inside the saved network, so checkpoints and the logged model
    predict exactly what the run's test accuracy measured."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.net(x)
        return (self.net(x) + self.net(x.flip(3))) / 2


class Normalize(nn.Module):
    """Raw pixels 0..255 -> zero mean, unit variance, with the training split's statistics."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def _check_rate(rate: float, key: str) -> float:
    if not is_number(rate) or not 0.0 <= rate < 1.0:
        raise ConfigError(f"{key}={rate!r} must be in [0, 1) (0 = no dropout).")
    return rate


class Dense(nn.Sequential):
    """flatten -> (dropout) -> (linear -> activation -> dropout) per hidden width -> linear to the
    classes. Dropout has no parameters: any rate keeps the parameter count."""

    def __init__(
        self,
        n_in: int,
        hidden: Sequence[int],
        act: type[nn.Module],
        num_classes: int,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ):
        _check_rate(dropout, "model.dropout")
        widths = [n_in, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        if _check_rate(input_dropout, "model.feature_dropout") > 0:
            layers.append(nn.Dropout(input_dropout))
        for w_in, w_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(w_in, w_out), act()]
            layers += [nn.Dropout(dropout)] if dropout > 0 else []
        super().__init__(*layers, nn.Linear(widths[-1], num_classes))


class MLP(nn.Module):
    """784 -> hidden... -> 10, fully connected (the blog's first row: 784-256-128-10)."""

    def __init__(
        self,
        hidden: Sequence[int] = (256, 128),
        activation: str = "relu",
        dropout: float = 0.0,
        num_classes: int = 10,
    ):
        super().__init__()
        act = _activation(activation)
        if not hidden or not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ConfigError(f"model.hidden={list(hidden)!r} must be a list of positive ints.")
        self.layers = Dense(28 * 28, hidden, act, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvBlock(nn.Sequential):
    """conv -> (BatchNorm) -> activation -> 2x2 max-pool."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, padding: int, act: type[nn.Module], bn: bool
    ):
        layers = [nn.Conv2d(c_in, c_out, kernel, padding=padding)]
        layers += [nn.BatchNorm2d(c_out)] if bn else []
        super().__init__(*layers, act(), nn.MaxPool2d(2))


class LeNet(nn.Module):
    """LeNet-5 as in the blog's progression: conv(1->c1, k1, padding 1) -> pool -> conv(c1->c2, k2)
    -> pool -> fc 120 -> fc 84 -> fc 10. channels/kernel_size/activation/batch_norm give every row.
    """

    def __init__(
        self,
        channels: int | Sequence[int] = (6, 16),
        kernel_size: int | Sequence[int] = 5,
        activation: str = "tanh",
        batch_norm: bool = False,
        hidden: Sequence[int] = (120, 84),
        dropout: float = 0.0,
        feature_dropout: float = 0.0,
        num_classes: int = 10,
    ):
        super().__init__()
        c1, c2 = _pair(channels, "model.channels", double=True)
        k1, k2 = _pair(kernel_size, "model.kernel_size", double=False)
        size = 28
        for i, (k, pad) in enumerate(
            ((k1, 1), (k2, 0)), start=1
        ):  # spatial size through each block
            if size + 2 * pad - k + 1 < 2:
                raise ConfigError(
                    f"model.kernel_size={kernel_size!r}: conv {i} has kernel {k} but its input is "
                    f"{size}x{size} (padding {pad}), which leaves no room for the 2x2 pool. "
                    f"Use a smaller kernel (the blog uses 3 or 5)."
                )
            size = (size + 2 * pad - k + 1) // 2
        act = _activation(activation)
        self.features = nn.Sequential(
            ConvBlock(1, c1, k1, 1, act, batch_norm), ConvBlock(c1, c2, k2, 0, act, batch_norm)
        )
        self.head = Dense(c2 * size * size, hidden, act, num_classes, dropout, feature_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (no bias: BatchNorm has one) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """x + two conv_bn layers of the same width."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(width, width), conv_bn(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualCNN(nn.Module):
    """A small ResNet-9-style network (as in the CIFAR-10 speedruns), sized for 28x28 grayscale:
    stem -> [conv, pool, residual] -> [conv, pool] -> [conv, pool, residual] -> global max-pool -> fc.
    widths (24, 48, 96, 192): 926,578 parameters."""

    def __init__(
        self,
        widths: Sequence[int] = (24, 48, 96, 192),
        dropout: float = 0.0,
        num_classes: int = 10,
    ):
        super().__init__()
        if len(widths) != 4 or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ConfigError(
                f"model.widths={list(widths)!r} must be four positive ints (stem, stage 1-3)."
            )
        _check_rate(dropout, "model.dropout")
        w0, w1, w2, w3 = widths
        self.layers = nn.Sequential(
            conv_bn(1, w0),
            conv_bn(w0, w1), nn.MaxPool2d(2), Residual(w1),  # 14x14
            conv_bn(w1, w2), nn.MaxPool2d(2),  # 7x7
            conv_bn(w2, w3), nn.MaxPool2d(2), Residual(w3),  # 3x3
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(w3, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    return total, sum(p.numel() for p in module.parameters() if p.requires_grad)
