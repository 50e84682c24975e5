"""`toolkit demo --imagenet` on a tiny budget: real Lite0 ImageNet weights against scratch, on tiny
Fashion-MNIST files; the sweep's grid extension; the CLI wiring."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from fashion_helpers import tiny_demo_fashion
from toolkit import artifacts
from toolkit.errors import UserError
from toolkit.train import demo_imagenet as demo
from toolkit.train import demo_pool


def test_tiny_demo_writes_table_json_md_and_plot(tmp_path, monkeypatch, capsys):
    tiny_demo_fashion(tmp_path, monkeypatch)
    out = tmp_path / "demo"
    opts = demo.ImagenetDemoOptions(seeds=[0], labels_per_class=[1], steps=1, transfer_lrs=[3e-3],
                                    scratch_lrs=[3e-3], out_dir=str(out),
                                    overrides=[f"data.root={tmp_path / 'data'}", "data.val_fraction=0.1"])
    record = demo.run_imagenet_demo(opts)
    printed = capsys.readouterr().out
    assert "| labels per class | transfer | scratch | transfer gain | transfer steps | scratch steps |" in printed
    assert "(a fixed 30 of t10k)" in printed  # 3 per class here; 2,000 with the real files
    assert "\nmachine: " in printed and " usable cores, torch " in printed  # under the table: CPU, ISA, threads
    saved = json.loads((out / "demo.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["arch"] == "efficientnet_lite0" and saved["input_px"] == 64 and saved["test_images"] == 30
    assert [r["labels_per_class"] for r in saved["rows"]] == [1]
    for row in saved["rows"]:
        for arm in ("transfer", "scratch"):
            assert 0 <= row[arm]["mean"] <= 100 and row[arm]["std"] == 0  # one seed
            assert row[arm]["steps"] == 1  # K=1 is 10 images: one step an epoch, a cap of 1 step
        assert row["gain"] == pytest.approx(row["transfer"]["mean"] - row["scratch"]["mean"])
    # The sweep ran per arm at K=1, seed 0 (one rate each here); its runs stand in for (K=1, seed 0).
    assert saved["select"]["chosen"] == {"transfer@1": 3e-3, "scratch@1": 3e-3}
    assert [(r["arm"], r["labels_per_class"]) for r in saved["runs"]] == [("scratch", 1), ("transfer", 1)]
    assert [r["run"] for r in saved["runs"]] == [r["run"] for r in saved["select"]["runs"]]
    assert [(r["steps"], r["cap"]) for r in saved["runs"]] == [(1, 1), (1, 1)]
    transfer = (out / "transfer-k1-s0-lr0.003" / "recipe.yaml").read_text()
    assert "weights: imagenet" in transfer and "arch: efficientnet_lite0" in transfer
    assert "weights: none" in (out / "scratch-k1-s0-lr0.003" / "recipe.yaml").read_text()
    run_files = {p.name for p in (out / "transfer-k1-s0-lr0.003").iterdir()}
    assert not run_files & {"tb", "curves.png", "confusion.png", "report.html"}  # 30-odd short runs: none of these
    assert "| labels per class |" in (out / "demo.md").read_text()
    assert "Learning rates, per arm and labels per class" in (out / "demo.md").read_text()
    assert "| 1 | transfer | **0.003** |" in (out / "demo.md").read_text()  # the sweep: one row per (K, arm, rate)
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Runs finish in any order; the showcase (the last transfer run) is what `toolkit export` picks.
    assert artifacts.newest_run(str(out)) == saved["trust"]["run"] == str(out / "transfer-k1-s0-lr0.003")
    assert "every run on one torch thread" in saved["machine"]
    # It ends with the next commands, and one test image per class to predict (file-safe names).
    assert "\n  toolkit export --int8" in printed and "T-shirt-top.png" in {p.name for p in (out / "samples").iterdir()}


@pytest.mark.slow
def test_the_table_does_not_depend_on_how_many_runs_train_at_once(tmp_path, monkeypatch):
    tiny_demo_fashion(tmp_path, monkeypatch)
    records = []
    for workers in (1, 2):
        opts = demo.ImagenetDemoOptions(seeds=[0, 1], labels_per_class=[1, 2], steps=2, transfer_lrs=[1e-3, 3e-3],
                                        scratch_lrs=[3e-3], workers=workers, out_dir=str(tmp_path / f"w{workers}"),
                                        overrides=[f"data.root={tmp_path / 'data'}", "data.val_fraction=0.1"])
        records.append(demo.run_imagenet_demo(opts))
    one, two = records
    assert one["rows"] == two["rows"] and one["select"]["chosen"] == two["select"]["chosen"]
    assert [(r["arm"], r["labels_per_class"], r["seed"], r["test_top1"]) for r in one["runs"]] == \
           [(r["arm"], r["labels_per_class"], r["seed"], r["test_top1"]) for r in two["runs"]]


def test_the_pool_runs_each_call_on_one_torch_thread_and_keeps_input_order():
    import torch

    with demo_pool.RunPool(2) as pool:
        assert pool.run(torch.get_num_threads) == 1
        assert pool.each(lambda x: pool.run(abs, x), [-3, 2, -1]) == [3, 2, 1]
    assert demo_pool.worker_count(3) == 3  # asked for: taken as given
    assert 1 <= demo_pool.worker_count(0) <= demo_pool.MAX_WORKERS


def test_the_pool_collects_garbage_after_each_run():
    """A run's model and optimizer sit in reference cycles: the worker frees them before its next run."""
    import pool_helpers

    with demo_pool.RunPool(1) as pool:
        pool.run(pool_helpers.leave_a_cycle)
        assert pool.run(pool_helpers.cycles_alive) == 0


def test_ctrl_c_ends_an_idle_worker_without_a_traceback(capfd):
    """The terminal sends Ctrl-C to every worker too; an idle one (waiting for work) used to print a
    KeyboardInterrupt traceback. Now it leaves quietly, or (when the signal lands inside the executor's own
    hand-over of a result, which keeps any exception) stays until the pool shuts down, as the main process
    does on Ctrl-C. Either way: gone, and no traceback."""
    import os
    import signal
    import time

    import pool_helpers

    with demo_pool.RunPool(1) as pool:
        worker = pool.run(pool_helpers.pid)
        time.sleep(0.5)  # past the result's hand-over: waiting for the next run
        os.kill(worker, signal.SIGINT)
        time.sleep(0.5)
    deadline = time.monotonic() + 60  # the worker's interpreter shuts down: seconds on a loaded machine
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.1)
    assert not _alive(worker), _signal_state(worker)
    assert "Traceback" not in capfd.readouterr().err


def _signal_state(pid: int) -> str:
    """What a worker still alive says about its signals and where it waits (for the failure message)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = [line.strip() for line in f if line.startswith(("State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn",
                                                                   "SigCgt", "Threads"))]
        with open(f"/proc/{pid}/wchan") as f:
            return "; ".join(lines + ["wchan: " + f.read()])
    except OSError as exc:
        return str(exc)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited, its parent just has not reaped it
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_the_first_failed_run_cancels_the_queued_ones():
    import operator
    import time

    def item(x):  # 0 fails at once in the worker; the others keep the one worker busy for 4 s each
        return pool.run(operator.truediv, 1, 0) if x == 0 else pool.run(time.sleep, x)

    with demo_pool.RunPool(1) as pool:
        started = time.perf_counter()
        with pytest.raises(ZeroDivisionError):
            pool.each(item, [4, 0] + [4] * 8)
        # the runs in progress and those already handed to the worker finish (about 12 s with the start-up);
        # the others never start: all nine would take 36 s
        assert time.perf_counter() - started < 26


def _runs(val_by_lr, loss_by_lr=None):
    return [{"lr": lr, "val_top1": v, "val_loss": (loss_by_lr or {}).get(lr, 1.0)} for lr, v in val_by_lr.items()]


def test_a_near_tie_goes_to_the_lower_validation_loss():
    # 48.0 vs 47.5: within a point, so the loss decides, not a one-image difference in top-1
    runs = _runs({1e-3: 20, 3e-3: 47.5, 1e-2: 48}, {1e-3: 2.0, 3e-3: 1.1, 1e-2: 1.3})
    assert demo.pick_rate(runs, tie_points=1.0) == 3e-3
    assert demo.pick_rate(runs, tie_points=0.0) == 1e-2  # no tolerance: top-1 alone
    runs = _runs({1e-3: 20, 3e-3: 45, 1e-2: 48}, {1e-3: 2.0, 3e-3: 1.1, 1e-2: 1.3})
    assert demo.pick_rate(runs, tie_points=1.0) == 1e-2  # 3 points apart is not a tie
    assert demo.pick_rate(_runs({1e-3: 40, 3e-3: 40}), tie_points=1.0) == 1e-3  # same loss too: the lower rate
    # the grid grows from the picked rate, not the raw top-1's: 3e-3 is interior, so no extension
    assert demo._next_rate(_runs({1e-3: 20, 3e-3: 47.5, 1e-2: 48}, {3e-3: 0.5}), 0, tie_points=1.0) is None


def test_budget_caps_steps_validates_on_a_step_cadence_and_probes_inside_the_cap():
    # K=1 (one step an epoch): 150 epochs, validate every 15, probe 15 of them
    assert demo.budget(150, 1, 15, 15) == {"epochs": 150, "eval_every": 15, "probe_epochs": 15}
    # K=20 (7 steps an epoch): 21 epochs = 147 steps, never past the cap; every 2 epochs = 14 steps
    assert demo.budget(150, 7, 15, 15) == {"epochs": 21, "eval_every": 2, "probe_epochs": 2}
    # more labels never get fewer steps: the cap is in steps, the same for every K
    assert all(demo.budget(150, n, 15, 0)["epochs"] * n > 150 - n for n in range(1, 40))
    assert demo.budget(150, 7, 15, 0)["probe_epochs"] == 0  # scratch: no probe
    assert demo.budget(4, 7, 15, 15) == {"epochs": 1, "eval_every": 1, "probe_epochs": 0}  # tiny cap: no probe


def test_runs_stop_when_validation_stops_improving_and_report_their_steps(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    tops = [(1, None), (2, 30.0), (4, 45.0), (6, 44.0), (8, 45.0), (10, 40.0)]  # best at epoch 4; stopped at 10
    metrics.write_text("".join(json.dumps({"epoch": e, "val_top1": v, "val_loss": None if v is None else 100 - v})
                               + "\n" for e, v in tops))
    assert demo.best_scores(str(tmp_path)) == {"val_top1": 45.0, "val_loss": 55.0, "best_epoch": 4, "epochs_run": 10}


def test_early_stopping_reaches_the_recipe():
    opts = demo.ImagenetDemoOptions(steps=150, eval_steps=15, patience=3, probe_steps=15,
                                    overrides=["data.root=nowhere"])
    recipe = demo._load("transfer", 5, 0, 1e-2, "x", opts)
    t = recipe.train
    assert (t.epochs, t.eval_every, t.early_stopping, t.freeze_epochs) == (75, 8, 3, 8)
    scratch = demo._load("scratch", 5, 0, 1e-2, "x", opts).train
    assert (scratch.epochs, scratch.early_stopping, scratch.freeze_epochs) == (75, 3, 0)  # the same cap; no probe


def test_sweep_grows_the_grid_when_the_best_rate_is_at_an_end():
    assert demo._next_rate(_runs({1e-3: 20, 3e-3: 40, 1e-2: 48}), 0) == 0.03  # best at the top: one step up
    assert demo._next_rate(_runs({1e-3: 50, 3e-3: 40, 1e-2: 30}), 0) == 0.000333  # at the bottom: one down
    assert demo._next_rate(_runs({1e-3: 20, 3e-3: 50, 1e-2: 48}), 0) is None  # an interior best: done
    assert demo._next_rate(_runs({1e-3: 20, 3e-3: 40, 1e-2: 48}), demo.MAX_EXTEND) is None  # bounded
    assert demo._next_rate(_runs({1e-3: 20}), 0) is None  # a single rate (quick mode) is not a grid
    # an edge tied with its neighbour (within tie_points) brackets the optimum: no extension
    tied = _runs({1e-3: 74.0, 3e-3: 74.0, 1e-2: 64.8}, {1e-3: 1.166, 3e-3: 1.198, 1e-2: 2.27})
    assert demo.pick_rate(tied, tie_points=1.0) == 1e-3 and demo._next_rate(tied, 0, tie_points=1.0) is None
    clear = _runs({1e-3: 79.7, 3e-3: 75.5, 1e-2: 76.5}, {1e-3: 0.999, 3e-3: 1.215, 1e-2: 1.962})
    assert demo._next_rate(clear, 0, tie_points=1.0) == 0.000333  # 4.2 points over its neighbour: grow


def test_bad_options_are_one_clear_error():
    with pytest.raises(UserError, match="expected at least one seed"):
        demo.ImagenetDemoOptions(seeds=[]).check()
    with pytest.raises(UserError, match="positive learning rates"):
        demo.ImagenetDemoOptions(scratch_lrs=[0.0]).check()
    with pytest.raises(UserError, match="workers -1; expected 0"):
        demo.ImagenetDemoOptions(workers=-1).check()


def test_cli_flag_reaches_the_imagenet_demo():
    proc = subprocess.run([sys.executable, "-m", "toolkit", "demo", "--imagenet", "--steps", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "demo --imagenet: steps 0; expected at least 1" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
