"""The one device rule (`--device auto|cpu|cuda|cuda:N`), the same in every command."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from sta_cli.errors import StaError
from sta_cli.runtime.device import check_device, runtime_device, torch_device

NO_GPU = not torch.cuda.is_available()


def test_auto_is_the_gpu_when_visible_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device("auto") == torch_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert torch_device("auto") == torch.device("cuda:3")  # under torchrun: this rank's GPU
    assert torch_device("cpu") == torch.device("cpu")


def test_explicit_cuda_checks_the_gpu_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(StaError, match=r"^--device cuda:1: no CUDA device is available$"):
        torch_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert torch_device("cuda") == torch.device("cuda:0") and torch_device("CUDA:1") == torch.device("cuda:1")
    with pytest.raises(StaError, match="only 2 CUDA device"):
        torch_device("cuda:2")


@pytest.mark.parametrize("spec", ["tpu", "cuda:", "cuda:x", "gpu", "cpu:0"])
def test_unknown_spelling(spec):
    with pytest.raises(StaError, match=f"unknown device '{spec}'"):
        check_device(spec)


def test_onnx_runtime_follows_the_same_choice():
    assert [runtime_device(s) for s in (None, "auto", "cpu", "cuda", "cuda:1")] == [
        "auto",
        "auto",
        "cpu",
        "cuda",
        "cuda",
    ]


@pytest.mark.skipif(not NO_GPU, reason="needs a machine without a GPU")
@pytest.mark.parametrize(
    "command",
    [
        ["export", "--model", "demo", "-o", "out"],
        ["profile", "--model", "demo", "--runs", "1"],
        ["eval", "no-such-list.txt", "--model", "demo"],
    ],
)
def test_cuda_without_a_gpu_is_the_same_error_in_every_command(tmp_path, command):
    r = run_cli(*command, "--device", "cuda", cwd=tmp_path)
    assert_one_line_error(r, "--device cuda: no CUDA device is available")
    assert r.exit_code == 1 and not any(tmp_path.iterdir())  # failed before writing (or loading) anything
