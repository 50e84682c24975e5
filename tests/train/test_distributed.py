"""Distributed training (torchrun + DDP, gloo on the CPU): sharding, equality with one process, rank-0-only
writes, resume after SIGTERM, and a dead or stalled rank ending the job with a clear message."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import make_image_folder, tiny_recipe, write_recipe
from toolkit import recipe as recipe_mod
from toolkit.train.checkpoint import load_checkpoint
from toolkit.train.distributed import IGNORE, Dist, _report_failures, is_collective_failure
from toolkit.errors import UserError
from toolkit.train.model import group_learning_rates, lr_scale
from toolkit.train.loop import train
from toolkit.train.sampling import EpochBatches, SeededAugmentation, epoch_order

# Float32 sums in another order (per-rank partial gradients, then an all-reduce) differ in the last bits,
# and training amplifies that. Measured on an AMD EPYC (AVX-512), this recipe, weights moving 1.05e-3:
#   - one step's weight gradient, a batch of 17 against batches of 9 + 8 summed: 1.2e-6 relative in float32
#     (with oneDNN held to AVX2 too), 4e-15 in float64; the forward pass is bit-identical;
#   - DDP against one process after 2 / 3 / 4 / 5 epochs: 1.5e-8 / 2.1e-8 / 3.0e-8 / 3.4e-8; after 6 epochs
#     4.5e-8 with the reference on 2 threads but 1.4e-5 on 1 thread (the ranks run 1 each); the same runs
#     in float64 (model and images .double(), both arms): 8e-17 and 1.3e-16.
# So the float32 noise of this run reaches 1.4e-5, set by the reference's thread count alone (an earlier test
# in the same process that called torch.set_num_threads(1) was enough to go from 4.5e-8 to 1.4e-5). The bound
# sits 7x above that noise and far below what real DDP mistakes give: scaling each rank's loss by its own
# batch instead of the global one differs by 1e-1, letting rank 1's padding sample count (no IGNORE) by 1.9e-1.
WEIGHT_TOLERANCE = 1e-4
EPOCHS = 6
GLOBAL_BATCH = 17  # 18 training images: batches of 17 (9 + 8 per rank) and 1 (one rank gets padding)


def test_shards_partition_every_global_batch():
    for world in (1, 2, 3, 4):
        for size in range(1, 12):
            batch = list(range(100, 100 + size))
            parts = [Dist(rank=r, world=world).shard(batch) for r in range(world)]
            real = [x for part, padding in parts if not padding for x in part]
            assert real == batch  # in order, each item exactly once
            sizes = [len(p) for p, padding in parts if not padding]
            assert max(sizes) - min(sizes) <= 1
            assert sum(padding for _, padding in parts) == max(0, world - size)


def test_epoch_batches_match_the_single_process_order():
    n, b = 18, 5
    order = epoch_order(n, seed=3, epoch=2)
    one = list(EpochBatches(n, 3, 2, b, Dist()))
    assert one == [[2 * n + i for i in order[s:s + b]] for s in range(0, n, b)]
    two = [list(EpochBatches(n, 3, 2, b, Dist(rank=r, world=2))) for r in range(2)]
    assert [a + c for a, c in zip(*two)] == one
    assert list(EpochBatches(n, 3, 2, b, Dist(), skip=2)) == one[2:]


def test_padding_loads_with_an_ignored_target():
    class Inner:
        def __len__(self):
            return 4

        def load(self, index, seed=None):
            return torch.zeros(1), index

    data = SeededAugmentation(Inner(), seed=0)
    assert data[4 + 1] == (torch.zeros(1), 1)
    assert data[-(4 + 1) - 1][1] == IGNORE


def test_gloo_failures_are_recognised():
    """Messages gloo raised here (as plain RuntimeErrors) when a peer stalled or died mid-collective."""
    for text in ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out "
                 "waiting 3000ms for recv operation to complete",
                 "Application timeout caused pair closure",
                 "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                 "[127.0.0.1]:3471: Connection reset by peer"):
        assert is_collective_failure(RuntimeError(text)), text
    assert not is_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_collective_failure(ValueError("timeout"))


def test_launcher_names_only_the_ranks_that_died_silently(capsys):
    sigterm, sigabrt, sigkill = -signal.SIGTERM, -signal.SIGABRT, -signal.SIGKILL
    # Rank 0 printed its own error (2); rank 1 was caught exiting by the agent's SIGTERM.
    assert _report_failures([(0, 2), (1, sigabrt)], 2) == 2 and capsys.readouterr().err == ""
    assert _report_failures([(0, sigterm), (1, 2)], 2) == 2 and capsys.readouterr().err == ""
    # A rank killed from outside is named, whatever the others said.
    assert _report_failures([(0, 2), (1, sigkill)], 2) == 2
    assert capsys.readouterr().err == "error: rank 1 of 2 failed (killed by SIGKILL); the other ranks were stopped\n"
    assert _report_failures([(0, sigterm), (1, sigabrt)], 2) == 1
    assert "rank 1 of 2 failed (killed by SIGABRT)" in capsys.readouterr().err
    assert _report_failures([(1, 1)], 2) == 1 and "(exit status 1)" in capsys.readouterr().err


def test_lr_scaling_rule(tmp_path):
    cfg = recipe_mod.TrainConfig(lr=0.01, lr_decay=1.0, batch_size=256, lr_scaling="linear", lr_reference_batch=32)
    assert lr_scale(cfg) == pytest.approx(8.0)
    assert group_learning_rates(cfg)["block1"] == pytest.approx(0.08)
    cfg.lr_scaling = "sqrt"
    assert lr_scale(cfg) == pytest.approx(8 ** 0.5)
    assert lr_scale({"lr": 0.01, "batch_size": 64}) == 1.0  # a recipe older than the rule


def test_distributed_recipe_keys_are_checked(tmp_path, image_folder):
    raw = tiny_recipe(tmp_path, image_folder, train={"lr_scaling": "linear", "sync_batchnorm": True,
                                                      "dist_timeout": 0})
    with pytest.raises(UserError) as err:
        recipe_mod.from_dict(raw)
    text = str(err.value)
    assert "train.lr_reference_batch: null with train.lr_scaling: linear" in text
    assert "train.sync_batchnorm: true, but model.arch vgg11 has no BatchNorm" in text
    assert "train.dist_timeout: 0" in text


def test_sync_batchnorm_refused_on_cpu_under_ddp(tmp_path, image_folder, monkeypatch):
    raw = tiny_recipe(tmp_path, image_folder, model={"arch": "vgg11_bn"}, train={"sync_batchnorm": True})
    monkeypatch.setattr(Dist, "join", lambda self, device, timeout: None)  # no process group needed to refuse
    monkeypatch.setattr(Dist, "on_main", lambda self, fn: fn())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="SyncBatchNorm runs on CUDA devices only"):
        train(recipe_mod.from_dict(raw), quiet=True)


# ------------------------------------------------------------------------------------------------
# Real two-process runs

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny data, a 'pretrained' vgg11 file (so fine-tuning with a frozen first epoch is allowed), a recipe,
    and the single-process reference run it is compared with."""
    import torchvision

    root = tmp_path_factory.mktemp("ddp")
    make_image_folder(root / "images", classes=3, per_class=8)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg11().state_dict(), root / "vgg11.pth")
    raw = tiny_recipe(root, root / "images", model={"weights": str(root / "vgg11.pth"), "dropout": 0.0},
                      train={"strategy": "finetune", "freeze_epochs": 1, "epochs": EPOCHS,
                             "batch_size": GLOBAL_BATCH, "lr": 0.05, "lr_decay": 0.5,
                             "amp": "off"})  # float32 sums: amp auto trains VGG in bf16 on CPUs with native BF16
    recipe = write_recipe(root / "recipe.yaml", raw)
    # The reference's float32 sums depend on its thread count (see WEIGHT_TOLERANCE): pin it to what each rank
    # uses, whatever earlier tests in this process set.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        train(recipe_mod.load(recipe, ["name=single"]), quiet=True)
    finally:
        torch.set_num_threads(threads)
    return root, recipe


def _weights(run_dir):
    return load_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))["model"]


def _assert_close_to_reference(root, name):
    ref, got = _weights(root / "runs" / "single"), _weights(root / "runs" / name)
    initial = torch.load(root / "vgg11.pth", weights_only=True)
    diff = max(float((ref[k] - got[k]).abs().max()) for k in ref)
    moved = max(float((ref[k] - initial[k]).abs().max()) for k in ref if k.startswith("features"))
    assert moved > 1e-3, "the reference run barely trained: the comparison would prove nothing"
    assert diff <= WEIGHT_TOLERANCE, f"DDP weights differ from the single-process run by {diff:.2e}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(root, recipe, name, overrides=(), rank1_out=None):
    """Two ranks started by hand with the environment torchrun would give them."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        extra = [f"out_dir={rank1_out}"] if rank and rank1_out else []
        procs.append(subprocess.Popen([sys.executable, "-m", "toolkit", "train", recipe, f"name={name}", *overrides,
                                       *extra], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return procs


def _wait_for_first_epoch(metrics, procs, limit=120):
    deadline = time.time() + limit
    while not (os.path.exists(metrics) and os.path.getsize(metrics)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "training never got going"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_ranks_match_one_process_and_only_rank0_writes(setup):
    root, recipe = setup
    # Rank 1 gets its own out_dir: anything it wrote would land there.
    procs = _start_ranks(root, recipe, "ddp", rank1_out=root / "rank1")
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:]
    _assert_close_to_reference(root, "ddp")
    assert not (root / "rank1").exists()
    assert outs[1] == ("", "")  # rank 1 printed nothing: no log lines, no progress bars
    assert outs[0][0].count(f"epoch {EPOCHS}/{EPOCHS}  train loss") == 1
    assert "2 processes (gloo), global batch 17" in outs[0][0]
    lines = (root / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == EPOCHS
    ckpt = load_checkpoint(str(root / "runs" / "ddp" / "checkpoints" / "last.pt"))
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    # The first epoch trained the head alone; the blocks joined after the unfreeze (a fresh DDP wrapper).
    ddp_records = [json.loads(line) for line in lines]
    assert ddp_records[0]["trainable"] == ["head"] and "block1" in ddp_records[1]["trainable"]
    single_records = [json.loads(line) for line in (root / "runs" / "single" / "metrics.jsonl").open()]
    for a, b in zip(ddp_records, single_records):  # validation is reduced over both ranks' halves
        assert a["val_top1"] == b["val_top1"] and a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)


@pytest.mark.slow
def test_resume_under_ddp_after_sigterm(setup):
    root, recipe = setup
    launcher = subprocess.Popen([sys.executable, "-m", "toolkit", "train", recipe, "name=resumed", "--nproc", "2"],
                                cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_first_epoch(root / "runs" / "resumed" / "metrics.jsonl", [launcher])
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "--resume --nproc 2" in err and "Traceback" not in err
    stopped = load_checkpoint(str(root / "runs" / "resumed" / "checkpoints" / "last.pt"))
    assert stopped["epoch"] < EPOCHS  # it really was interrupted
    done = subprocess.run([sys.executable, "-m", "toolkit", "train", str(root / "runs" / "resumed" / "recipe.yaml"),
                           "--resume", "--nproc", "2"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout
    _assert_close_to_reference(root, "resumed")


@pytest.mark.slow
def test_a_stalled_rank_times_out_with_a_clear_message(setup):
    root, recipe = setup
    procs = _start_ranks(root, recipe, "stall", ["train.epochs=200", "train.dist_timeout=5"])
    try:
        _wait_for_first_epoch(root / "runs" / "stall" / "metrics.jsonl", procs)
        procs[1].send_signal(signal.SIGSTOP)  # alive but silent: the case a missing timeout hangs on forever
        started = time.time()
        _, err = procs[0].communicate(timeout=120)
        waited = time.time() - started
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert procs[0].returncode == 2
    assert "rank 0 of 2: lost contact with the other processes" in err and "train.dist_timeout (5 s)" in err
    assert "Traceback" not in err
    assert waited < 60


@pytest.mark.slow
def test_a_killed_rank_takes_the_job_down(setup):
    root, recipe = setup
    launcher = subprocess.Popen([sys.executable, "-m", "toolkit", "train", recipe, "name=killed", "train.epochs=200",
                                 "--nproc", "2"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_first_epoch(root / "runs" / "killed" / "metrics.jsonl", [launcher])
        with open(f"/proc/{launcher.pid}/task/{launcher.pid}/children") as fh:
            workers = [int(p) for p in fh.read().split()]
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    assert "failed (killed by SIGKILL); the other ranks were stopped" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_an_error_every_rank_meets_is_printed_once(setup):
    root, recipe = setup
    done = subprocess.run([sys.executable, "-m", "toolkit", "train", recipe, "name=tiny-batch", "train.batch_size=1",
                           "--nproc", "2"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("error: ") == 1, done.stderr
    assert "train.batch_size 1: smaller than the 2 processes" in done.stderr and "Traceback" not in done.stderr
    # a teacher that is no checkpoint, met by every rank's model build: printed once (it was once per rank)
    (root / "bad.pt").write_bytes(b"not a checkpoint")
    done = subprocess.run([sys.executable, "-m", "toolkit", "train", recipe, "name=bad-teacher", "train.teacher=bad.pt",
                           "--nproc", "2"], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("error: ") == 1, done.stderr
    assert "bad.pt" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_plain_torchrun_runs_the_same_command(setup):
    """The README's `torchrun --nproc-per-node N -m toolkit train RECIPE`, through torchrun's own entry point."""
    root, recipe = setup
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "toolkit", "train", recipe, "name=torchrun", "train.epochs=2"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 processes (gloo), global batch 17" in done.stdout
    assert done.stdout.count("epoch 2/2  train loss") == 1
    assert load_checkpoint(str(root / "runs" / "torchrun" / "checkpoints" / "last.pt"))["world_size"] == 2
