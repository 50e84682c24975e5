"""The training loop: artifacts, exact resume, signals, kill -9, the NaN guard, freezing, evaluate."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, tiny_recipe, write_recipe
from toolkit import recipe as recipe_mod
from toolkit.train.checkpoint import load_checkpoint
from toolkit.errors import UserError
from toolkit.train.loop import train
from toolkit.train.schedule import lr_factor


def _train(raw, **kwargs):
    return train(recipe_mod.from_dict(raw), quiet=True, **kwargs)


def _weights(run_dir, name="last.pt"):
    return load_checkpoint(os.path.join(run_dir, "checkpoints", name))["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tiny_run_writes_every_artifact(tmp_path, image_folder):
    summary = _train(tiny_recipe(tmp_path, image_folder))
    run = tmp_path / "runs" / "tiny"
    for name in ("recipe.yaml", "param_groups.txt", "metrics.jsonl", "curves.png", "confusion.png", "summary.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert not [f for f in os.listdir(run / "checkpoints") if f.startswith(".tmp")]
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_s"):
        assert key in records[0]
    assert set(records[0]["lr"]) == {"block1", "block2", "block3", "block4", "block5", "head"}
    ckpt = load_checkpoint(str(run / "checkpoints" / "last.pt"))
    assert ckpt["epoch"] == 2 and ckpt["labels"] == ["class_0", "class_1", "class_2"]
    assert recipe_mod.from_dict(ckpt["recipe"]).model.arch == "vgg11"
    assert recipe_mod.load(str(run / "recipe.yaml")).train.epochs == 2  # the resolved recipe re-loads
    assert "block5" in (run / "param_groups.txt").read_text()
    assert summary["best_checkpoint"].endswith("best.pt")


def test_a_run_nobody_resumes_writes_last_pt_once(tmp_path, image_folder, monkeypatch):
    """resumable=False (the ImageNet demo's runs): last.pt only at the end, the same weights as by default."""
    from toolkit.train import session

    written, save = [], session.save_checkpoint
    monkeypatch.setattr(session, "save_checkpoint", lambda path, state: (written.append(os.path.basename(path)),
                                                                        save(path, state)))
    raw = tiny_recipe(tmp_path, image_folder, train={"epochs": 3})
    _train(raw)
    assert written.count("last.pt") == 3  # save_every 1
    written.clear()
    _train({**raw, "name": "once"}, resumable=False)
    assert written.count("last.pt") == 1
    assert load_checkpoint(str(tmp_path / "runs" / "once" / "checkpoints" / "last.pt"))["epoch"] == 3
    _assert_same(_weights(tmp_path / "runs" / "tiny"), _weights(tmp_path / "runs" / "once"))


def test_refuses_to_overwrite_a_run(tmp_path, image_folder):
    raw = tiny_recipe(tmp_path, image_folder, train={"epochs": 1})
    _train(raw)
    with pytest.raises(UserError, match="already holds a trained run; pass --resume"):
        _train(raw)
    with pytest.raises(UserError, match="nothing to resume"):
        _train({**raw, "name": "other"}, resume=True)


def test_an_empty_validation_split_says_why(tmp_path):
    """One photo a class cannot give up one for validation: the error says so, not 'set val_fraction above 0'
    (it is 0.25 here)."""
    from data_helpers import make_folder
    root = make_folder(tmp_path / "photos", ["a", "b"], n=1)
    with pytest.raises(UserError, match=r"validation split is empty: at data.val_fraction 0.25 a class needs "
                                        r"at least 2 images"):
        _train(tiny_recipe(tmp_path, root))
    with pytest.raises(UserError, match=r"set data.val_fraction above 0"):
        _train(tiny_recipe(tmp_path, root, data={"val_fraction": 0.0}))
    assert not os.path.exists(tmp_path / "runs")   # no empty run folder left behind


def test_overwrite_keeps_the_old_run_when_the_new_one_fails_its_checks(tmp_path, image_folder):
    """--overwrite replaces a run only once the new one's data and model loaded: a corrupt image found by
    the scan must not cost the user the run they had."""
    raw = tiny_recipe(tmp_path, image_folder, train={"epochs": 1})
    _train(raw)
    run = tmp_path / "runs" / "tiny"
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    broken = sorted((tmp_path / "images").rglob("*.jpg"))[0]
    broken.write_bytes(b"not an image")
    with pytest.raises(UserError, match="not a recognised image"):
        _train(raw, overwrite=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before == ["best.pt", "last.pt"]
    broken.unlink()
    _train(raw, overwrite=True)  # and a good one does replace it
    assert (run / "recipe.yaml").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_discriminative_rates_reach_the_optimizer(tmp_path, image_folder):
    source = tiny_recipe(tmp_path, image_folder, train={"epochs": 1})
    _train(source)
    raw = tiny_recipe(tmp_path, image_folder, name="fine",
                      model={"weights": str(tmp_path / "runs" / "tiny" / "checkpoints" / "best.pt")},
                      train={"strategy": "finetune", "epochs": 1, "lr": 0.01, "lr_decay": 0.5,
                             "schedule": "constant"})
    _train(raw)
    lrs = json.loads(open(tmp_path / "runs" / "fine" / "metrics.jsonl").readline())["lr"]
    assert lrs["head"] == pytest.approx(0.01)
    for k in range(1, 6):
        assert lrs[f"block{k}"] == pytest.approx(0.01 * 0.5 ** (6 - k))
    assert "0.0003" in open(tmp_path / "runs" / "fine" / "param_groups.txt").read()  # block1, in the table


def test_frozen_blocks_bit_identical_through_training(tmp_path, image_folder):
    _train(tiny_recipe(tmp_path, image_folder, train={"epochs": 1}))
    source = _weights(tmp_path / "runs" / "tiny")
    raw = tiny_recipe(tmp_path, image_folder, name="partial",
                      model={"weights": str(tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt")},
                      train={"strategy": "finetune", "trainable_blocks": [4, 5], "freeze_epochs": 1, "epochs": 2,
                             "lr_decay": 0.5})
    _train(raw)
    tuned = _weights(tmp_path / "runs" / "partial")
    from toolkit.train.model import build_model, group_of

    model = build_model("vgg11", 3, input_size=32, hidden=32)
    frozen = [k for k in source if k.startswith("features") and group_of(model, k) in ("block1", "block2", "block3")]
    trained = [k for k in source if k.startswith("features") and group_of(model, k) in ("block4", "block5")]
    assert frozen and trained
    for key in frozen:
        assert torch.equal(source[key], tuned[key]), key
    assert any(not torch.equal(source[k], tuned[k]) for k in trained)
    records = [json.loads(line) for line in open(tmp_path / "runs" / "partial" / "metrics.jsonl")]
    assert records[0]["trainable"] == ["head"]  # the head-only warm-up
    assert records[1]["trainable"] == ["block4", "block5", "head"]


def test_resume_gives_the_same_weights(tmp_path, image_folder):
    """Deterministic CPU: 3 epochs straight == 1 epoch, stop, resume to 3."""
    straight = tiny_recipe(tmp_path, image_folder, name="straight", train={"epochs": 3})
    _train(straight)
    split = tiny_recipe(tmp_path, image_folder, name="split", train={"epochs": 3})
    _train(split, stop_after_epochs=1)
    assert load_checkpoint(str(tmp_path / "runs" / "split" / "checkpoints" / "last.pt"))["epoch"] == 1
    _train(split, resume=True)
    _assert_same(_weights(tmp_path / "runs" / "straight"), _weights(tmp_path / "runs" / "split"))
    lines = open(tmp_path / "runs" / "split" / "metrics.jsonl").read().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_fused_optimizer_is_used_and_resumes_exactly(tmp_path, image_folder, optimizer):
    from toolkit.train.model import build_from_recipe, group_params
    from toolkit.train.step import build_optimizer

    fused = {"optimizer": optimizer, "fused_optimizer": True, "epochs": 3}
    recipe = recipe_mod.from_dict(tiny_recipe(tmp_path, image_folder, train=fused))
    model = build_from_recipe(recipe, num_classes=3)
    assert build_optimizer(model, recipe.train, set(group_params(model))).defaults["fused"] is True
    plain = recipe_mod.from_dict(tiny_recipe(tmp_path, image_folder, train={"optimizer": optimizer}))
    assert not build_optimizer(model, plain.train, set(group_params(model))).defaults.get("fused")
    _train(tiny_recipe(tmp_path, image_folder, name="straight", train=fused))
    split = tiny_recipe(tmp_path, image_folder, name="split", train=fused)
    _train(split, stop_after_epochs=1)
    _train(split, resume=True)  # the fused optimizer's state comes back from last.pt
    _assert_same(_weights(tmp_path / "runs" / "straight"), _weights(tmp_path / "runs" / "split"))


def test_sigterm_mid_epoch_saves_and_resumes_exactly(tmp_path, image_folder, monkeypatch):
    from toolkit.train import data as data_mod

    straight = tiny_recipe(tmp_path, image_folder, name="straight", train={"epochs": 2})
    _train(straight)

    calls = {"n": 0}
    original = data_mod.ImageDataset.load

    def interrupting(self, index, seed=None):
        if self.augment is not None:
            calls["n"] += 1
            if calls["n"] == 18 + 5:  # second batch of epoch 2 (18 training images, batches of 4)
                os.kill(os.getpid(), signal.SIGTERM)
        return original(self, index, seed)

    monkeypatch.setattr(data_mod.ImageDataset, "load", interrupting)
    raw = tiny_recipe(tmp_path, image_folder, name="stopped", train={"epochs": 2})
    with pytest.raises(SystemExit) as info:
        _train(raw)
    assert info.value.code == 128 + signal.SIGTERM
    ckpt = load_checkpoint(str(tmp_path / "runs" / "stopped" / "checkpoints" / "last.pt"))
    assert ckpt["epoch"] == 1 and ckpt["run_state"]["step_in_epoch"] > 0
    monkeypatch.setattr(data_mod.ImageDataset, "load", original)
    _train(raw, resume=True)
    _assert_same(_weights(tmp_path / "runs" / "straight"), _weights(tmp_path / "runs" / "stopped"))


def test_augmentation_does_not_depend_on_worker_count(tmp_path, image_folder):
    """Each sample's augmentation is seeded by (seed, epoch, index): 0 or 2 loader workers, same weights."""
    _train(tiny_recipe(tmp_path, image_folder, name="w0", train={"epochs": 1}))
    _train(tiny_recipe(tmp_path, image_folder, name="w2", data={"workers": 2}, train={"epochs": 1}))
    _assert_same(_weights(tmp_path / "runs" / "w0"), _weights(tmp_path / "runs" / "w2"))


@pytest.mark.slow
def test_kill_9_loses_at_most_one_epoch(tmp_path, image_folder):
    raw = tiny_recipe(tmp_path, image_folder, train={"epochs": 40, "deterministic": False})
    path = write_recipe(tmp_path / "r.yaml", raw)
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "train", path], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
            time.sleep(0.05)
        assert metrics.exists(), "training did not get going"
    finally:
        proc.kill()  # SIGKILL: no handler runs
        proc.wait()
    done = len(metrics.read_text().splitlines())  # epochs finished before the kill (logged just before saving)
    ckpt = load_checkpoint(str(tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"))
    assert ckpt["epoch"] >= done - 1
    # and the run continues from there
    _train({**raw, "train": {**raw["train"], "epochs": ckpt["epoch"] + 1}}, resume=True)
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == list(range(1, ckpt["epoch"] + 2))


def test_nan_guard_stops_and_never_saves_non_finite_weights(tmp_path, image_folder):
    raw = tiny_recipe(tmp_path, image_folder, train={"epochs": 3, "lr": 1e12, "schedule": "constant",
                                                     "momentum": 0.0, "nan_patience": 2})
    with pytest.raises(UserError, match=r"non-finite .* epoch \d+"):
        _train(raw)
    last = tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"
    if last.exists():
        for tensor in load_checkpoint(str(last))["model"].values():
            assert torch.isfinite(tensor).all()


def test_evaluate_checkpoint_from_the_cli(tmp_path, image_folder, capsys):
    """The command in a process of its own, then a bad checkpoint through the same entry point in-process
    (a second interpreter start would add only its start-up time)."""
    from toolkit import cli

    _train(tiny_recipe(tmp_path, image_folder, train={"epochs": 1}))
    proc = subprocess.run([sys.executable, "-m", "toolkit", "evaluate", str(tmp_path / "runs" / "tiny"),
                           "--split", "val"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "top-1" in proc.stdout and "top-5" in proc.stdout
    assert "per-class accuracy" in proc.stdout and "confusion matrix" in proc.stdout
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SystemExit) as stop:
        cli.main(["evaluate", str(bad)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "not a PyTorch checkpoint" in err and len(err.strip().splitlines()) == 1


def test_evaluate_of_a_run_uses_the_calibration_training_fitted_on_best_pt(tmp_path, image_folder, capsys):
    """`toolkit evaluate RUN` scores best.pt at the T and threshold of the run's calibration.json; last.pt, a
    best.pt newer than the file (a later best) and a run without one are at T = 1, each saying why; a
    corrupt file or a T that is not a positive number is one clear error."""
    import json
    import os

    from toolkit.train.evaluate import evaluate_checkpoint

    _train(tiny_recipe(tmp_path, image_folder, train={"epochs": 1}))
    run = tmp_path / "runs" / "tiny"
    best, last, saved = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt", run / "calibration.json"
    from toolkit.artifacts import sha256_file

    written = json.loads(saved.read_text())   # which best.pt it holds for, by content (copies keep it)
    assert written["checkpoint_sha256"] == sha256_file(str(best))   # (the tiny run has too few val images to calibrate)
    saved.write_text(json.dumps({"temperature": 2.0, "ood": {"score": "energy", "threshold": -1e9,
                                                              "accept_rate": 0.95}}))
    cal = evaluate_checkpoint(str(best), split="val", quiet=True, run_calibrated=True)["calibration"]
    assert cal["temperature"] == 2.0 and cal["accept_rate"] == 1.0 and cal["source"] == "the run's calibration.json"
    assert cal["ece"] != cal["ece_uncalibrated"]
    from toolkit import cli

    cli.main(["evaluate", str(run), "--split", "val"])
    printed = capsys.readouterr().out
    assert "calibration: T 2.000 (the run's calibration.json)" in printed and "accepted 100.0%" in printed

    cal = evaluate_checkpoint(str(last), split="val", quiet=True, run_calibrated=True)["calibration"]
    assert cal["temperature"] is None
    assert cal["source"] == "none for last.pt: the run's calibration.json was fitted on best.pt"
    later = os.path.getmtime(saved) + 10
    os.utime(best, (later, later))
    cal = evaluate_checkpoint(str(best), split="val", quiet=True, run_calibrated=True)["calibration"]
    assert cal["temperature"] is None and "older than best.pt" in cal["source"] and cal["accept_rate"] is None
    for text, expected in (("{not json", "unreadable"), ('{"temperature": -1}', "finite positive number")):
        saved.write_text(text)
        os.utime(saved, (later + 10, later + 10))
        with pytest.raises(SystemExit) as stop:
            cli.main(["evaluate", str(run)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_evaluate_of_a_run_takes_an_ood_folder(tmp_path, image_folder, capsys):
    """`toolkit evaluate RUN --ood DIR`, as for an .onnx file: AUROC, FPR at 95% TPR and the share the run's
    threshold rejects, the folder's images through the eval transform training's own evaluation uses; a
    missing folder is one error."""
    import numpy as np
    from PIL import Image

    from toolkit.recipe import from_dict
    from toolkit.train.evaluate import folder_logits, split_logits
    from toolkit.train.model import model_from_checkpoint

    raw = tiny_recipe(tmp_path, image_folder, train={"epochs": 1})
    _train(raw)
    run = tmp_path / "runs" / "tiny"
    (run / "calibration.json").write_text(json.dumps({"temperature": 1.5, "ood": {
        "score": "energy", "threshold": 0.0, "accept_rate": 0.95}}))
    photos = tmp_path / "not-these"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (50 + i, 40, 3), dtype=np.uint8)).save(photos / f"noise_{i}.png")
    from toolkit import cli

    cli.main(["evaluate", str(run), "--ood", str(photos), "--json"])
    ood = json.loads(capsys.readouterr().out)["calibration"]["ood"]
    assert ood["n_ood"] == 6 and 0.0 <= ood["auroc"] <= 1.0 and 0.0 <= ood["rejection_rate"] <= 1.0

    model, _ = model_from_checkpoint(str(run / "checkpoints" / "best.pt"))
    recipe, dev = from_dict(raw, check_paths=False), torch.device("cpu")
    paths = sorted(str(p) for p in photos.iterdir())
    as_training_reads_them = split_logits(model, recipe, [(p, 0) for p in paths], 4, dev)[0]
    np.testing.assert_allclose(folder_logits(model, recipe, str(photos), 4, dev), as_training_reads_them,
                               rtol=1e-5, atol=1e-5)

    with pytest.raises(SystemExit) as stop:
        cli.main(["evaluate", str(run), "--ood", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: --ood ") and "no such folder" in err
    assert len(err.strip().splitlines()) == 1, err


def test_truncated_checkpoint_is_a_clear_error(tmp_path, image_folder):
    _train(tiny_recipe(tmp_path, image_folder, train={"epochs": 1}))
    last = tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    with pytest.raises(UserError, match="corrupt or truncated checkpoint"):
        load_checkpoint(str(last))


def test_one_cycle_and_cosine_shapes():
    factors = [lr_factor(s, 0, 100, "onecycle", 0) for s in range(100)]
    assert factors[0] < 0.1 and max(factors) == pytest.approx(1.0, abs=0.01) and factors[-1] < 0.01
    assert factors.index(max(factors)) in range(20, 30)
    cosine = [lr_factor(s, 0, 100, "cosine", 10) for s in range(100)]
    assert cosine[0] < cosine[9] and cosine[10] == pytest.approx(1.0) and cosine[-1] < 0.01
    assert lr_factor(50, 0, 100, "constant", 0) == 1.0


def test_cli_flags_never_swallow_the_next_argument(tmp_path, image_folder, monkeypatch):
    """fire would read `--resume train.epochs=3` as resume='train.epochs=3' and `--overwrite=false` as true."""
    from toolkit import cli
    from toolkit.flags import spell_out

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, image_folder, train={"epochs": 1}))
    monkeypatch.chdir(tmp_path)
    cli.main(["train", recipe])
    cli.main(["train", recipe, "--resume", "train.epochs=2"])  # the override reaches the resume
    assert load_checkpoint(str(tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"))["epoch"] == 2
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", recipe, "--overwrite=false"])  # false means false: the run is kept
    assert stop.value.code == 2
    assert load_checkpoint(str(tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"))["epoch"] == 2
    assert spell_out(cli.COMMANDS, ["predict", "--allow-fallback", "a.jpg", "--top-k", "3"]) == \
        ["predict", "--allow-fallback=True", "a.jpg", "--top-k", "3"]
    with pytest.raises(SystemExit):
        cli.main(["train", recipe, "--resume=maybe"])


@pytest.mark.parametrize("name, message", [("foo", "device 'foo': expected auto, cpu, cuda, cuda:N or mps"),
                                           ("cuda:x", "device 'cuda:x': expected"), ("tpu", "device 'tpu': expected")])
def test_a_device_that_is_no_device_is_one_error(name, message):
    """`toolkit report RUN --device foo` (and evaluate's) ended in torch's RuntimeError traceback."""
    from toolkit.train.device import pick_device

    with pytest.raises(UserError, match=message):
        pick_device(name)
    assert pick_device("CPU ") == torch.device("cpu") and pick_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="cuda requested but torch sees no CUDA device"):
            pick_device("cuda:1")
