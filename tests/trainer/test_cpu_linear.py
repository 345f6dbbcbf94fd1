"""trainer.cpu_linear: the blocked small-batch product equals F.linear and is used only where it may be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer import cpu_linear


@pytest.mark.parametrize("rows", [1, 3, 4, 7, 12, 15, 16, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_blocked_linear_equals_f_linear(rows, bias):
    gen = torch.Generator().manual_seed(rows)
    layer = torch.nn.Linear(96, 192, bias=bias)
    x = torch.randn(rows, 96, generator=gen)
    expected = F.linear(x, layer.weight, layer.bias)
    got = cpu_linear.blocked_linear(x, layer.weight, layer.bias)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # (batch, sequence, features) inputs keep their leading shape.
    x3 = x.reshape(1, rows, 96)
    torch.testing.assert_close(cpu_linear.blocked_linear(x3, layer.weight, layer.bias), expected.reshape(1, rows, 192),
                               rtol=1e-5, atol=1e-5)


def test_install_forced_patches_eligible_layers_and_keeps_outputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 100))
    x = torch.randn(2, 5, 64)  # 10 rows: the blocked range
    with torch.inference_mode():
        before = model(x)
    assert cpu_linear.install(model, force=True)
    assert "forward" in vars(model[0]) and "forward" not in vars(model[2])  # 100 outputs: not in blocks of 64
    with torch.inference_mode():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    # With autograd on, the patched layer is plain F.linear: gradients flow as before.
    out = model(x).sum()
    out.backward()
    assert model[0].weight.grad is not None


def test_install_off_and_measured():
    model = torch.nn.Sequential(torch.nn.Linear(64, 128))
    assert cpu_linear.install(model, force=False) is False and "forward" not in vars(model[0])
    timings = cpu_linear.calibrate([model[0].weight], rows=(4,))
    assert set(timings) == {4} and all(t > 0 for pair in timings.values() for t in pair)
    assert isinstance(cpu_linear.install(model), bool)  # measured: on or off, outputs unchanged either way
    x = torch.randn(6, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), F.linear(x, model[0].weight, model[0].bias), rtol=1e-5, atol=1e-5)
    assert cpu_linear.install(torch.nn.Sequential(torch.nn.ReLU())) is False  # nothing to patch


def test_install_measures_once_per_architecture(monkeypatch):
    monkeypatch.setattr(cpu_linear, "_DECIDED", {})
    calls = []
    real = cpu_linear.calibrate

    def counting(weights, *args, **kwargs):
        calls.append(len(weights))
        return real(weights, *args, **kwargs)

    monkeypatch.setattr(cpu_linear, "calibrate", counting)
    first = cpu_linear.install(torch.nn.Sequential(torch.nn.Linear(64, 128)))
    assert cpu_linear.install(torch.nn.Sequential(torch.nn.Linear(64, 128))) == first  # same shapes: no new timing
    assert len(calls) == 1
    cpu_linear.install(torch.nn.Sequential(torch.nn.Linear(64, 192)))  # other shapes: measured
    assert len(calls) == 2
