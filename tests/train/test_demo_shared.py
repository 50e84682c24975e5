"""What both demos share: the steps columns, the scratch-keeps-up check and the machine line."""
import pytest

from toolkit.train import demo_shared


def _results(scratch_by_k, transfer=80.0, steps=10):
    out = []
    for k, accs in scratch_by_k.items():
        for seed, acc in enumerate(accs):
            out.append({"arm": "scratch", "labels_per_class": k, "seed": seed, "test_top1": acc, "steps": steps * k})
            out.append({"arm": "transfer", "labels_per_class": k, "seed": seed, "test_top1": transfer,
                        "steps": steps * k + seed})
    return out


def _rows(scratch_by_k):
    results = _results(scratch_by_k)
    return demo_shared.add_steps(demo_shared.summarise(results, list(scratch_by_k)), results)


def test_a_starved_scratch_arm_is_flagged_and_noise_is_not():
    # the table: 46.9 ± 3.1 at 5 labels, 36.2 ± 3.1 at 20: 10.7 points lost, far beyond the spread
    starved = _rows({1: [28, 30, 31.7], 5: [43, 47.5, 50.2], 20: [32, 37, 39.6]})
    assert demo_shared.scratch_drops(starved) == [(5, 20, pytest.approx(10.7, abs=0.1))]
    assert demo_shared.scratch_check_line(starved).startswith("warning: scratch gets worse as labels grow")
    # a 1-point dip inside the seeds' spread is noise
    noisy = _rows({1: [30, 31, 29], 5: [44, 49, 47], 20: [46, 45, 47]})
    assert demo_shared.scratch_drops(noisy) == []
    assert demo_shared.scratch_check_line(noisy).startswith("check: scratch does not get worse")


def test_table_shows_each_arms_steps_when_asked():
    rows = _rows({1: [30, 31, 29], 5: [44, 49, 47]})
    plain = demo_shared.table_lines(rows)
    assert plain[0] == "| labels per class | transfer | scratch | transfer gain |"  # unchanged without steps
    with_steps = demo_shared.table_lines(rows, steps=True)
    assert with_steps[0].endswith("| transfer gain | transfer steps | scratch steps |")
    assert with_steps[1] == "|---|---|---|---|---|---|"
    assert with_steps[3] == "| 5 | 80.0 ± 0.0% | 46.7 ± 2.1% | +33.3 points | 51 | 50 |"  # steps: mean over seeds


def test_machine_line_names_cpu_isa_cores_and_threads():
    line = demo_shared.machine_line()
    assert line.startswith("machine: ") and " usable cores, torch " in line and line.endswith(" threads")
    assert "AVX" in line or "no AVX2" in line or "AMX" in line  # the ISA summary of the benchmark's machine_info
    assert demo_shared.machine_line("every run on one torch thread").endswith(", every run on one torch thread")


def test_next_steps_paste_as_they_read():
    """A run or image path with a space or an accent printed bare: pasted, the shell split it in two."""
    from toolkit.train.demo_shared import next_steps

    text = next_steps("runs/my demo/ü", "my photos/rose 1.jpg")
    assert "toolkit export 'runs/my demo/ü'" in text and "toolkit predict 'my photos/rose 1.jpg'" in text
    assert "toolkit predict runs/x.png" in next_steps("runs/x", "runs/x.png")   # a plain path stays plain
