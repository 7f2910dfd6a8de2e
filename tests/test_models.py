"""MLP and ResNet-20: shapes, initialisation, the feature-norm intervention, chunked prediction, a training step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ncflow.engine.data import batch_indices, load_dataset
from ncflow.engine.models import MLP, ResNet20, build_model, predict_in_chunks, rescale_final_hidden


def test_mlp_returns_logits_and_the_last_activation_output() -> None:
    torch.manual_seed(0)
    model = MLP(in_features=64, num_classes=10, depth=3, width=32)
    x = torch.randn(5, 1, 8, 8)
    logits, features = model(x)
    assert logits.shape == (5, 10) and features.shape == (5, 32)
    assert sum(isinstance(m, nn.Linear) for m in model.hidden) == 3
    assert isinstance(model.hidden[-1], nn.ReLU) and (features >= 0).all()
    torch.testing.assert_close(logits, model.head(features))
    assert model.final_hidden_layer() is model.hidden[-2]


@pytest.mark.parametrize(("activation", "gain"), [("relu", math.sqrt(2)), ("gelu", math.sqrt(2)), ("tanh", 5 / 3)])
def test_mlp_init_is_kaiming_normal_with_zero_biases(activation: str, gain: float) -> None:
    torch.manual_seed(0)
    model = MLP(in_features=784, num_classes=10, depth=2, width=512, activation=activation)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for linear in linears:
        assert torch.count_nonzero(linear.bias) == 0
    # std = gain / sqrt(fan_in): ReLU (and GELU, which torch gives no gain) sqrt(2/fan_in), Tanh (5/3)/sqrt(fan_in).
    # The big layers have >= 262,144 weights, so the sample std is within 0.3 % of it; allow 2 %.
    for linear in linears[:2]:
        expected = gain / math.sqrt(linear.in_features)
        assert linear.weight.std().item() == pytest.approx(expected, rel=0.02)
        assert abs(linear.weight.mean().item()) < 0.01 * expected


@pytest.mark.parametrize("alpha", [0.3, 3.0])
def test_rescaling_the_final_hidden_layer_scales_relu_features_by_alpha(alpha: float) -> None:
    torch.manual_seed(0)
    model = MLP(in_features=64, num_classes=10, depth=3, width=64)
    x = torch.randn(16, 1, 8, 8)
    _, before = model(x)
    rescale_final_hidden(model, alpha)
    _, after = model(x)
    torch.testing.assert_close(after, alpha * before, rtol=1e-6, atol=1e-6)


def test_rescaling_is_refused_for_resnet() -> None:
    with pytest.raises(ValueError, match="MLPs only"):
        rescale_final_hidden(ResNet20(3, 10), 3.0)


def test_resnet20_parameter_count() -> None:
    # Option A shortcuts have no parameters. Conv weights (3×3, no bias) and BN (2 per channel):
    #   stem 3·16·9 + 32 = 464;  stage 1: 6·16·16·9 + 6·32 = 14,016;
    #   stage 2: 16·32·9 + 5·32·32·9 + 6·64 = 51,072;  stage 3: 32·64·9 + 5·64·64·9 + 6·128 = 203,520;
    #   head 64·10 + 10 = 650;  total 269,722 (the 272,474 often quoted adds option B's 1×1 conv+BN shortcuts,
    #   16·32 + 64 + 32·64 + 128 = 2,752). One input channel instead of three saves 2·16·9 = 288.
    assert sum(p.numel() for p in ResNet20(3, 10).parameters()) == 269_722
    assert sum(p.numel() for p in ResNet20(1, 10).parameters()) == 269_434


def test_resnet20_init_is_kaiming_with_zero_head_bias() -> None:
    torch.manual_seed(0)
    model = ResNet20(3, 10)
    last_conv = model.stages[2][2].conv2  # 64·64·9 = 36,864 weights, fan_in 576
    assert last_conv.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.03)
    assert torch.count_nonzero(model.head.bias) == 0


@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_resnet20_forward_and_backward(input_shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = ResNet20(input_shape[0], 10)
    logits, features = model(torch.randn(4, *input_shape))
    assert logits.shape == (4, 10) and features.shape == (4, 64)
    F.cross_entropy(logits, torch.arange(4)).backward()
    for parameter in model.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


def test_one_epoch_of_sgd_on_tiny_synthetic_images_reduces_the_loss() -> None:
    torch.manual_seed(0)
    data = load_dataset("synthetic", synthetic_classes=4, synthetic_shape=(3, 8, 8), synthetic_per_class=32)
    model = build_model("resnet20", data.input_shape, data.num_classes, depth=5, width=512, activation="relu")
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def full_set_loss() -> float:
        with torch.no_grad():
            return F.cross_entropy(model(data.train_x)[0], data.train_y).item()

    before = full_set_loss()
    for batch in batch_indices(len(data.train_y), 16, torch.Generator().manual_seed(0)):
        loss = F.cross_entropy(model(data.train_x[batch])[0], data.train_y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert full_set_loss() < 0.8 * before


@pytest.mark.parametrize("arch", ["mlp", "resnet20"])
def test_predict_in_chunks_equals_one_eval_forward_and_restores_the_mode(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, (1, 8, 8), 10, depth=2, width=16, activation="relu")
    x = torch.randn(23, 1, 8, 8)
    model.train()
    model(x)  # moves BatchNorm's running statistics away from their initial values
    model.eval()
    with torch.no_grad():
        expected_logits, expected_features = model(x)
    model.train()
    logits, features = predict_in_chunks(model, x, chunk_size=5)
    assert model.training
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(features, expected_features, rtol=1e-5, atol=1e-6)
    model.eval()
    predict_in_chunks(model, x)
    assert not model.training


def test_build_model_sizes_the_mlp_from_the_input_shape() -> None:
    model = build_model("mlp", (3, 8, 8), 4, depth=2, width=16, activation="tanh")
    assert isinstance(model, MLP) and model.hidden[1].in_features == 192 and model.head.out_features == 4


def test_build_model_rejects_unknown_choices() -> None:
    with pytest.raises(ValueError, match="arch must be one of mlp, resnet20"):
        build_model("vgg", (1, 8, 8), 10, depth=2, width=16, activation="relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        build_model("mlp", (1, 8, 8), 10, depth=2, width=16, activation="swish")
    with pytest.raises(ValueError, match="'relu' for arch 'resnet20'"):
        build_model("resnet20", (1, 8, 8), 10, depth=2, width=16, activation="gelu")
