"""Classifiers that return (logits, penultimate features): an MLP, the CIFAR ResNet-20 of He et al. (2016) and the
CIFAR ResNet-18 Han et al. train.

The penultimate features are what the collapse metrics measure (and Han et al.'s regularisers act on): the MLP's
last activation output, ResNet-20's 64-d and ResNet-18's 512-d globally pooled vector.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("relu", "gelu", "tanh")
ARCHS = ("mlp", "resnet20", "resnet18")
STAGE_POOL = 2  # `--layerwise` on ResNet-20: each stage's output pooled to STAGE_POOL × STAGE_POOL

# Kaiming gain per activation; torch has no gain for GELU, so it takes ReLU's (GELU ≈ ReLU for large |x|).
KAIMING_NONLINEARITY = {"relu": "relu", "gelu": "relu", "tanh": "tanh"}
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """``Flatten → (Linear → act) × depth → Linear head``; Kaiming-normal weights (fan-in), zero biases."""

    def __init__(self, in_features: int, num_classes: int, depth: int, width: int = 512, activation: str = "relu"):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"MLP needs depth >= 1 and width >= 1; got depth={depth}, width={width}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        for layer_index in range(depth):
            fan_in = in_features if layer_index == 0 else width
            layers += [nn.Linear(fan_in, width), ACTIVATION_MODULES[activation]()]
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.activation = activation
        _kaiming_init(self, KAIMING_NONLINEARITY[activation])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (N, K), penultimate features (N, width))."""
        features = self.hidden(x)
        return self.head(features), features

    def forward_layers(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(logits, features, every hidden layer's output after its activation, layer 1 first; the last is
        `features`)."""
        outputs, out = [], x
        for module in self.hidden:
            out = module(out)
            if isinstance(module, ACTIVATION_MODULES[self.activation]):
                outputs.append(out)
        return self.head(out), out, outputs

    def linear_layers(self) -> list[nn.Linear]:
        """Every Linear in forward order: the hidden ones, then the head."""
        return [module for module in self.hidden if isinstance(module, nn.Linear)] + [self.head]

    def final_hidden_layer(self) -> nn.Linear:
        """The last hidden Linear, whose output (after the activation) is the penultimate feature."""
        return [module for module in self.hidden if isinstance(module, nn.Linear)][-1]


class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers with ReLU and an identity shortcut (option A: subsample and zero-pad channels)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))

    def _shortcut(self, x: Tensor) -> Tensor:
        """Option A of He et al.: parameter-free; stride by subsampling, new channels are zeros (half each side)."""
        if self.stride == 1 and self.extra_channels == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        before = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))


class PooledResNet(nn.Module):
    """A CIFAR-style ResNet's forward: stem conv, BN, ReLU → `stages` → global average pool (the features) → `head`.
    Subclasses build `conv`, `bn`, `stages` and `head`."""

    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    stages: nn.Sequential
    head: nn.Linear

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (N, K), pooled features (N, the last stage's channels))."""
        out = self.stages(F.relu(self.bn(self.conv(x))))
        features = out.mean(dim=(2, 3))
        return self.head(features), features

    def forward_layers(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(logits, features, layers): each stage's output average-pooled to 2×2 and flattened (ResNet-20: 16·4, 32·4,
        64·4 values), then the pooled vector (the features)."""
        out, layers = F.relu(self.bn(self.conv(x))), []
        for stage in self.stages:
            out = stage(out)
            layers.append(F.adaptive_avg_pool2d(out, STAGE_POOL).flatten(1))
        features = out.mean(dim=(2, 3))
        return self.head(features), features, [*layers, features]


class ResNet20(PooledResNet):
    """CIFAR ResNet-20 (He et al. 2016, §4.2): conv 16 → 3 × 3 BasicBlocks (16/32/64) → global pool → Linear.

    Shortcuts are option A (parameter-free), as in the paper's CIFAR experiments: 269,722 parameters for 3-channel
    input and 10 classes (option B's 1×1 conv+BN shortcuts would add 2,752, giving the often-quoted 272,474).
    Works for 1 or 3 channels and any image size (stride 2 at stages 2 and 3; 8×8 → 2×2, 28×28 → 7×7).
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.stages = nn.Sequential(_stage(16, 16, stride=1), _stage(16, 32, stride=2), _stage(32, 64, stride=2))
        self.head = nn.Linear(64, num_classes)
        _kaiming_init(self, "relu")


class ProjectionBlock(BasicBlock):
    """A BasicBlock whose shortcut, where the shape changes, is a 1×1 convolution and BatchNorm (option B), as
    ResNet-18 has it."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def _shortcut(self, x: Tensor) -> Tensor:
        return self.shortcut(x)


class ResNet18(PooledResNet):
    """The CIFAR ResNet-18 Han et al. use (the common CIFAR variant of He et al.'s ImageNet network): a 3×3 stride-1
    stem conv with 64 channels, BN, ReLU and no max-pool; BasicBlocks [2, 2, 2, 2] at 64/128/256/512 channels (stride 2
    from the second stage on, projection shortcuts where the shape changes); global average pool to 512-d features;
    a linear head. 11,173,962 parameters for 3-channel input and 10 classes; any channel count and image size."""

    WIDTHS = (64, 128, 256, 512)

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(64)
        stages, previous = [], 64
        for index, width in enumerate(self.WIDTHS):
            stride = 1 if index == 0 else 2
            stages.append(nn.Sequential(ProjectionBlock(previous, width, stride), ProjectionBlock(width, width, 1)))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(512, num_classes)
        _kaiming_init(self, "relu")


def _stage(in_channels: int, out_channels: int, stride: int, blocks: int = 3) -> nn.Sequential:
    """``blocks`` BasicBlocks, the first one changing width and stride."""
    return nn.Sequential(
        BasicBlock(in_channels, out_channels, stride),
        *(BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)),
    )


def _kaiming_init(model: nn.Module, nonlinearity: str) -> None:
    """Kaiming-normal (fan-in) weights for every Linear and Conv2d, zero biases; BatchNorm keeps weight 1, bias 0."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=nonlinearity)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


RESNETS: dict[str, type[nn.Module]] = {"resnet20": ResNet20, "resnet18": ResNet18}


def build_model(
    arch: str, input_shape: tuple[int, int, int], num_classes: int, depth: int, width: int, activation: str
) -> nn.Module:
    """The classifier for ``arch``. The ResNets have a fixed depth, width and ReLU: they ignore ``depth`` and
    ``width`` and reject any activation but ``relu``."""
    if arch == "mlp":
        return MLP(math.prod(input_shape), num_classes, depth=depth, width=width, activation=activation)
    if arch in RESNETS:
        if activation != "relu":
            raise ValueError(f"activation must be 'relu' for arch {arch!r}; got {activation!r}")
        return RESNETS[arch](input_shape[0], num_classes)
    raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")


def network_from_weights(arch: str, depth: int, width: int, activation: str,
                         weights: Mapping[str, Tensor]) -> nn.Module:
    """The classifier whose state dict is `weights`, built and loaded, in eval mode: its input size and class count
    are read from the weights (an MLP's first Linear, a ResNet's first convolution, the head), so no data set is
    needed."""
    num_classes = weights["head.weight"].shape[0]
    first = weights["hidden.1.weight"] if arch == "mlp" else weights["conv.weight"]
    model = build_model(arch, (first.shape[1], 1, 1), num_classes, depth, width, activation)
    model.load_state_dict(weights)
    return model.eval()


def simplex_etf(num_classes: int, dim: int, seed: int) -> torch.Tensor:
    """A K × d simplex equiangular tight frame in a seeded random orthonormal frame (float64).

    Rows have unit norm and pairwise cosine −1/(K−1): sqrt(K/(K−1)) B Qᵀ, with B (K × (K−1)) an orthonormal basis of
    the centred vectors (B Bᵀ = I − 11ᵀ/K) and Q (d × (K−1)) orthonormal columns drawn from `seed`. Needs d ≥ K−1.
    """
    if dim < num_classes - 1:
        raise ValueError(f"a {num_classes}-class simplex ETF needs at least {num_classes - 1} dimensions, got {dim}")
    centred = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    basis, _ = torch.linalg.qr(centred[:, : num_classes - 1])
    generator = torch.Generator().manual_seed(seed)
    frame, _ = torch.linalg.qr(torch.randn(dim, num_classes - 1, generator=generator, dtype=torch.float64))
    return math.sqrt(num_classes / (num_classes - 1)) * basis @ frame.T


@torch.no_grad()
def fix_head_to_etf(model: nn.Module, seed: int) -> None:
    """`--classifier etf`: the head's weight becomes a simplex ETF (`simplex_etf`), its bias zero, both frozen."""
    head = model.head
    num_classes, dim = head.weight.shape
    head.weight.copy_(simplex_etf(num_classes, dim, seed).to(head.weight))
    head.bias.zero_()
    head.weight.requires_grad_(False)
    head.bias.requires_grad_(False)


@torch.no_grad()
def rescale_final_hidden(model: nn.Module, alpha: float) -> None:
    """Multiply the MLP's final hidden Linear (weight and bias) by ``alpha`` in place.

    With ReLU and alpha > 0 the penultimate features scale exactly by alpha (relu(αz) = α·relu(z)).
    """
    if not isinstance(model, MLP):
        raise ValueError(
            "rescale_final_hidden (the feature-norm intervention) is defined for MLPs only; "
            f"got {type(model).__name__}"
        )
    layer = model.final_hidden_layer()
    layer.weight.mul_(alpha)
    layer.bias.mul_(alpha)


def layer_count(arch: str, depth: int) -> int:
    """How many layers `--layerwise` measures: an MLP's hidden layers, a ResNet's stages (ResNet-20 three, ResNet-18
    four) and its pooled vector."""
    return {"mlp": depth, "resnet20": 4, "resnet18": 5}[arch]


@torch.no_grad()
def predict_in_chunks(model: nn.Module, x: Tensor, chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
    """(logits, features) of the whole of ``x`` in eval mode, ``chunk_size`` samples at a time.

    The model's previous train/eval mode is restored afterwards.
    """
    logits, features = zip(*_in_eval_mode(model, model, x, chunk_size))
    return torch.cat(logits), torch.cat(features)


@torch.no_grad()
def predict_layers_in_chunks(model: nn.Module, x: Tensor, chunk_size: int = 4096) -> tuple[Tensor, Tensor, list[Tensor]]:
    """(logits, features, every layer's output) of the whole of ``x`` in the same eval-mode pass (`forward_layers`)."""
    logits, features, layers = zip(*_in_eval_mode(model, model.forward_layers, x, chunk_size))
    return torch.cat(logits), torch.cat(features), [torch.cat(layer) for layer in zip(*layers)]


def _in_eval_mode(model: nn.Module, call: Callable[[Tensor], Any], x: Tensor, chunk_size: int) -> list[Any]:
    """`call` on each chunk of ``x`` with the model in eval mode; its previous mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        return [call(chunk) for chunk in x.split(chunk_size)]
    finally:
        model.train(was_training)
