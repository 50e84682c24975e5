"""toolkit.train.model.fold: evaluation with each BatchNorm folded into its convolution (CPU, tiny)."""
import pytest
import torch
from torch import nn

from toolkit.train.model.backbones import build_model
from toolkit.train.model.fold import folded_for_eval


def _with_statistics(arch: str, px: int = 64) -> nn.Module:
    """A model whose BatchNorms hold running statistics of their own (not 0/1), left in training mode."""
    torch.manual_seed(0)
    model = build_model(arch, 5, input_size=px)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, px, px) * 2 + 0.5)
    return model.to(memory_format=torch.channels_last)


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(images)


def _images(n: int = 6, px: int = 64, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, px, px, generator=generator).contiguous(memory_format=torch.channels_last)


# Lite0: timm's Conv2dSame and BatchNormAct2d; efficientnet_b0: stochastic depth, which a trace made in
# training mode would keep; vgg11_bn: plain Conv2d -> BatchNorm2d.
@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_b0", "mobilenet_v3_small", "resnet18",
                                  "vgg11_bn"])
def test_folded_twin_gives_the_models_logits(arch):
    model = _with_statistics(arch)
    twin = folded_for_eval(model)  # called in training mode: it puts the model in eval mode first
    assert twin is not model and not model.training
    assert not [m for m in twin.modules() if isinstance(m, nn.BatchNorm2d)]  # every one folded
    images = _images()
    expected, got = _logits(model, images), _logits(twin, images)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())), \
        float((got - expected).abs().max())


def test_the_model_itself_is_untouched():
    model = _with_statistics("efficientnet_lite0")
    before = {name: id(module) for name, module in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    folded_for_eval(model)
    assert {name: id(module) for name, module in model.named_modules()} == before
    after = model.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert model.features[0].bias is None  # the stem conv keeps no folded bias


def test_twin_follows_the_weights_after_training_steps():
    model = _with_statistics("efficientnet_lite0")
    images, twin = _images(), folded_for_eval(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for seed in (2, 3):  # moves the conv weights and the BatchNorm statistics
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(_images(8, seed=seed)), torch.arange(8) % 5).backward()
        optimizer.step()
    stale = _logits(twin, images)
    fresh_twin = folded_for_eval(model)
    assert fresh_twin is twin  # traced once per model
    expected, got = _logits(model, images), _logits(fresh_twin, images)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    assert not torch.allclose(stale, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_nothing_to_fold_is_the_model_in_eval_mode():
    model = build_model("vgg11", 3, input_size=32)
    model.train()
    assert folded_for_eval(model) is model and not model.training


class _Branchy(nn.Module):
    """A conv -> BatchNorm that fx cannot trace: control flow on a tensor's value."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) if x.sum() > 0 else self.bn(self.conv(-x))


def test_an_untraceable_model_runs_as_it_is():
    model = _Branchy()
    assert folded_for_eval(model) is model and not model.training
