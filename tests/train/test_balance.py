"""Class balance in training: train.class_weights (loss weights) and train.sampler (the epoch's draw)."""
import json
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from conftest import make_image_folder, tiny_recipe
from toolkit import recipe as recipe_mod
from toolkit.train.balance import balanced_class_weights, class_counts, loss_weights, sample_weights
from toolkit.train.distributed import Dist
from toolkit.train.loop import train
from toolkit.train.sampling import EpochBatches
from toolkit.train.step import TrainStep


def _items(counts):
    return [(f"{k}_{i}.png", k) for k, n in enumerate(counts) for i in range(n)]


def test_balanced_weights_are_sklearns():
    from sklearn.utils.class_weight import compute_class_weight

    items = _items((10, 1, 4))
    y = [lab for _, lab in items]
    np.testing.assert_allclose(balanced_class_weights(class_counts(items, 3)),
                               compute_class_weight("balanced", classes=np.arange(3), y=y))
    assert loss_weights(SimpleNamespace(class_weights="none"), items, 3) is None


def test_class_weights_weight_each_images_loss():
    model = nn.Linear(2, 2)
    t = SimpleNamespace(grad_clip=None, channels_last=False, label_smoothing=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    plain = TrainStep(model, opt, t, torch.device("cpu"), None)
    weighted = TrainStep(model, opt, t, torch.device("cpu"), None, class_weights=torch.tensor([0.5, 3.0]))
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    per_image = nn.functional.cross_entropy(model(x), y, reduction="none")
    expected = (per_image * torch.tensor([0.5, 3.0, 3.0, 0.5])).sum()
    torch.testing.assert_close(weighted.forward(x, y)[1], expected)
    torch.testing.assert_close(plain.forward(x, y)[1], per_image.sum())


def test_balanced_sampler_draws_classes_equally_and_shards_across_ranks():
    items = _items((90, 10))
    weights = sample_weights(SimpleNamespace(sampler="balanced"), items, 2)
    one = list(EpochBatches(100, 3, 0, 20, Dist(), weights=weights))
    drawn = np.bincount([items[c % 100][1] for batch in one for c in batch], minlength=2)
    assert drawn.sum() == 100 and 35 <= drawn[1] <= 65  # about half, where uniform gives 10
    two = [list(EpochBatches(100, 3, 0, 20, Dist(rank=r, world=2), weights=weights)) for r in range(2)]
    assert [a + b for a, b in zip(*two)] == one  # under DDP each rank takes its part of the same draw
    assert one != list(EpochBatches(100, 3, 1, 20, Dist(), weights=weights))  # a new draw each epoch
    assert sample_weights(SimpleNamespace(sampler="uniform"), items, 2) is None


def test_train_with_balance_writes_the_resolved_recipe_and_data_health(tmp_path, capsys):
    images = make_image_folder(tmp_path / "images", classes=2, per_class=6)
    raw = tiny_recipe(tmp_path, images, train={"epochs": 1, "class_weights": "balanced", "sampler": "balanced"})
    summary = train(recipe_mod.from_dict(raw))
    run = tmp_path / "runs" / "tiny"
    resolved = recipe_mod.load(str(run / "recipe.yaml"))
    assert (resolved.train.class_weights, resolved.train.sampler) == ("balanced", "balanced")
    health = json.loads((run / "data_health.json").read_text())
    assert [row["class"] for row in health["class_balance"]] == ["class_0", "class_1"]
    assert health["leaks"] == [] and health["images"] == 12
    assert "class balance: train.class_weights balanced, train.sampler balanced" in capsys.readouterr().out
    assert summary


def test_train_without_the_scan_writes_no_data_health_and_trains_the_same(tmp_path):
    # The ImageNet demo's runs skip the scan (scanned once before them): the weights must not change.
    images = make_image_folder(tmp_path / "images", classes=2, per_class=6)
    weights = {}
    for scan in (True, False):
        raw = tiny_recipe(tmp_path, images, name=f"scan-{scan}", train={"epochs": 2})
        train(recipe_mod.from_dict(raw), quiet=True, scan=scan)
        run = tmp_path / "runs" / f"scan-{scan}"
        assert (run / "data_health.json").is_file() == scan
        weights[scan] = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert weights[True].keys() == weights[False].keys()
    assert all(torch.equal(weights[True][k], weights[False][k]) for k in weights[True])
