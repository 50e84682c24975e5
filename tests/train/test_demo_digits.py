"""`toolkit demo --quick` (the digits demo's smoke settings): the table's steps columns, and scratch
keeping up with the labels, the way a fair budget makes it."""
import pytest

from toolkit.train import demo


@pytest.mark.slow  # about 2 minutes on 2 cores: the quick demo's 19 trainings
def test_quick_demo_scratch_does_not_get_worse_as_labels_grow(tmp_path, capsys):
    record = demo.run_demo(quick=True, out_dir=str(tmp_path / "demo"))
    printed = capsys.readouterr().out
    assert record["scratch_drops"] == [], printed  # beyond the seeds' spread, scratch never loses with more labels
    assert "check: scratch does not get worse as labels grow" in printed
    steps = {(r["arm"], r["labels_per_class"]): r["steps"] for r in record["runs"]}
    # 4 epochs at batch 16: 5, 15 and 50 images make 1, 1 and 4 steps an epoch, the same for both arms
    assert steps == {(arm, k): 4 * n for arm in ("transfer", "scratch") for k, n in ((1, 1), (3, 1), (10, 4))}
