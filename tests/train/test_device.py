"""train.amp and train.channels_last on CPU (toolkit.train.device): native BF16 read from the CPU flags,
the per-arch choice of `auto`, and the warning (not an error) for bf16 without native BF16."""
import types
import warnings

import pytest

torch = pytest.importorskip("torch")
from toolkit.train import device  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture
def cpu_flags(tmp_path, monkeypatch):
    """fake(flags): this process's CPU now reports `flags` (a Linux /proc/cpuinfo)."""
    def fake(flags: str):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nmodel name\t: Fake CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
        monkeypatch.setattr(device, "CPUINFO", str(path))
        monkeypatch.setattr(device.sys, "platform", "linux")
    return fake


@pytest.mark.parametrize("flags, native", [("avx512f avx512_bf16", True), ("amx_tile amx_bf16", True),
                                           ("avx512f avx512_vnni", False), ("", False)])
def test_native_bf16_is_read_from_the_cpu_flags(cpu_flags, flags, native):
    cpu_flags(flags)
    assert device.cpu_has_native_bf16() is native


def test_no_native_bf16_off_linux_or_without_the_file(cpu_flags, monkeypatch, tmp_path):
    cpu_flags("amx_bf16")
    monkeypatch.setattr(device.sys, "platform", "darwin")
    assert device.cpu_has_native_bf16() is False
    monkeypatch.setattr(device.sys, "platform", "linux")
    monkeypatch.setattr(device, "CPUINFO", str(tmp_path / "missing"))
    assert device.cpu_has_native_bf16() is False


def test_auto_takes_bf16_only_with_native_bf16_and_where_the_table_says_faster(cpu_flags, monkeypatch):
    monkeypatch.setitem(device.CPU_FAST, "vgg", (True, False))
    monkeypatch.setitem(device.CPU_FAST, "mobilenet", (False, False))
    cpu_flags("avx512_bf16")
    assert device.amp_dtype("auto", CPU, "vgg16") is torch.bfloat16
    assert device.amp_dtype("auto", CPU, "mobilenet_v3_large") is None
    assert device.amp_dtype("off", CPU, "vgg16") is None
    with pytest.warns(RuntimeWarning, match="fp16 is for CUDA"):
        assert device.amp_dtype("fp16", CPU, "vgg16") is None
    cpu_flags("avx2")  # no native BF16: fp32 whatever the table says
    assert device.amp_dtype("auto", CPU, "vgg16") is None


def test_bf16_without_native_bf16_warns_and_still_trains_in_bf16(cpu_flags):
    cpu_flags("avx2")
    with pytest.warns(RuntimeWarning, match="without native BF16.*slower than fp32"):
        assert device.amp_dtype("bf16", CPU, "vgg16") is torch.bfloat16
    cpu_flags("amx_bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert device.amp_dtype("bf16", CPU, "mobilenet_v3_large") is torch.bfloat16


def test_channels_last_on_cpu_follows_the_table_and_the_recipe(monkeypatch):
    monkeypatch.setitem(device.CPU_FAST, "resnet", (False, True))
    monkeypatch.setitem(device.CPU_FAST, "vgg", (True, False))
    t_on, t_off = types.SimpleNamespace(channels_last=True), types.SimpleNamespace(channels_last=False)
    assert device.use_channels_last(t_on, CPU, "resnet18") is True
    assert device.use_channels_last(t_on, CPU, "vgg16") is False
    assert device.use_channels_last(t_off, CPU, "resnet18") is False
    assert device.use_channels_last(t_on, torch.device("cuda"), "vgg16") is True  # CUDA: as before, every arch
    assert device.use_channels_last(t_on, torch.device("meta"), "resnet18") is False


def test_fp16_on_the_cpu_says_it_trains_in_fp32():
    """device: auto on a machine without a GPU turned train.amp: fp16 into fp32 without a word."""
    from toolkit.train.device import amp_dtype

    with pytest.warns(RuntimeWarning, match="fp16 is for CUDA; this run is on the CPU and trains in fp32"):
        assert amp_dtype("fp16", torch.device("cpu")) is None
