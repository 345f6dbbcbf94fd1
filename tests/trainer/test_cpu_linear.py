"""trainer.cpu_linear: the blocked small-batch product equals F.linear and is used only where it may be."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F

from tests.threads import torch_threads
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


@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_rows_are_computed_alone_and_stay_close(monkeypatch, reduce_range, bias):
    """int8 products: a row's output is bit-identical alone and in any batch (rows of very
    different magnitudes, a row of zeros), and within int8 rounding of float32's."""
    if not reduce_range and cpu_linear._reduce_range():
        pytest.skip("8-bit activations need AVX-512 VNNI (without it fbgemm's 16-bit pair sums can saturate)")
    monkeypatch.setattr(cpu_linear, "_REDUCE_RANGE", reduce_range)
    gen = torch.Generator().manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(96, 200, bias=bias))
    layer = model[0]
    assert cpu_linear.install_int8(model) and "forward" in vars(layer)
    x = torch.randn(6, 96, generator=gen) * torch.tensor([[1.0], [1e3], [1e-3], [0.0], [5.0], [1.0]])
    x[5, 17] = 40.0  # one outlier channel
    with torch.inference_mode():
        batched = layer(x.reshape(2, 3, 96)).reshape(6, 200)
        alone = torch.cat([layer(row[None]) for row in x])
        reordered = layer(x.flip(0)).flip(0)
    assert torch.equal(batched, alone) and torch.equal(batched, reordered)
    assert not batched[3].any() if not bias else torch.equal(batched[3], layer.bias)
    # Relative error per row: ~1% with 8-bit activations, twice that with 7; more for the row
    # whose outlier sets its scale (its other channels get coarser steps).
    exact = F.linear(x, layer.weight, layer.bias)
    error = ((batched - exact).norm(dim=1) / exact.norm(dim=1).clamp(min=1e-12)).tolist()
    bits = 2 if reduce_range else 1
    assert max(error[:3] + error[4:5]) < 0.012 * bits and error[5] < 0.03 * bits, error
    # A row holding NaN or infinity gets NaN and leaves the others' results alone.
    broken = x.clone()
    broken[1, 5], broken[4, 0] = float("nan"), float("inf")
    with torch.inference_mode():
        out = layer(broken)
    assert out[[1, 4]].isnan().all() and torch.equal(out[[0, 2, 3, 5]], batched[[0, 2, 3, 5]])
    with torch.no_grad():  # the thread's staging buffer also serves calls outside inference mode
        assert torch.equal(layer(x), batched)
    # With autograd on, the layer is plain F.linear on the float32 weights.
    out = layer(x).sum()
    out.backward()
    assert layer.weight.grad is not None


def test_int8_staging_is_per_thread():
    """Each thread stages its inputs in its own buffer: concurrent calls do not mix rows."""
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    assert cpu_linear.install_int8(model)
    xs = [torch.randn(n, 64) for n in (1, 5, 300, 2) * 8]
    with torch.inference_mode():
        expected = [model(x) for x in xs]

    def run(x):
        with torch.inference_mode():
            return model(x)

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, xs))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def _attention_like(names=("q_proj", "k_proj", "v_proj"), bias=False):
    torch.manual_seed(3)
    block = torch.nn.Module()
    for name, width in zip(names, (48, 16, 16)):
        setattr(block, name, torch.nn.Linear(32, width, bias=bias))
    return block


@pytest.mark.parametrize("kind", ["int8", "float16"])
@pytest.mark.parametrize("bias", [False, True])
def test_siblings_on_one_input_are_served_by_one_stacked_product(kind, bias):
    """q/k/v (and gate/up) share one product over their stacked weights: each layer gets exactly
    what it gets on its own, in any call order and with inputs that change between calls."""
    install = getattr(cpu_linear, f"install_{kind}")
    stacked, alone = _attention_like(bias=bias), _attention_like(("a", "b", "c"), bias=bias)
    assert install(stacked) and install(alone)
    assert stacked.q_proj._stacked is stacked.v_proj._stacked and not hasattr(alone.a, "_stacked")
    x1, x2 = torch.randn(5, 32), torch.randn(1, 2, 32)
    with torch.inference_mode():
        calls = [("k_proj", x1), ("q_proj", x2), ("k_proj", x2), ("k_proj", x2), ("v_proj", x1),
                 ("q_proj", x1), ("v_proj", x2)]
        for name, x in calls:
            expected = getattr(alone, "abc"["qkv".index(name[0])])(x)
            assert torch.equal(getattr(stacked, name)(x), expected), name
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(stacked, name)(x1)
    assert stacked.q_proj._stacked._state.input is None  # every sibling served: no activations held
    out = stacked.k_proj(x1).sum()  # autograd: the float32 weights
    out.backward()
    assert stacked.k_proj.weight.grad is not None


def test_float16_row_independence_probe_agrees_with_the_models_shapes():
    """float16_rows_independent (a small product, checked once) answers for the products the
    model runs: a row of a 576-wide layer keeps its bits in every call of 1 to 12 rows exactly
    where the probe says so (the AVX-512 CPUs), and is within float16 products' rounding elsewhere."""
    gen = torch.Generator().manual_seed(1)
    packed = cpu_linear._pack_float16(torch.randn(960, 576, generator=gen) * 0.05)
    x = torch.randn(12, 576, generator=gen)
    alone = torch.cat([cpu_linear._float16_product(x[i:i + 1], packed) for i in range(len(x))])
    calls = [cpu_linear._float16_product(x[:m], packed) for m in range(1, len(x) + 1)]
    same = all(torch.equal(y, alone[:len(y)]) for y in calls)
    assert same == cpu_linear.float16_rows_independent()
    for y in calls:
        assert torch.allclose(y, alone[:len(y)], rtol=0, atol=1e-5)


# -- trainer._f16: the float16 kernel (an AVX2 and an AVX-512 loop) ------------------------------

def _f16():
    """The built kernel: on x86-64 it must have been built (setup.py) and run on this CPU."""
    module = cpu_linear._f16_module()
    if module is None:
        if platform.machine() in ("x86_64", "AMD64"):
            from trainer import _f16  # a missing build fails here, not as a skip

            assert not _f16.supported(), "trainer._f16 is built and supported but not used"
        pytest.skip("no AVX2 / FMA / F16C on this CPU")
    return module


@pytest.fixture(params=[False, True], ids=["avx2", "avx512"])
def loop(request):
    """Each of the kernel's loops: ``avx512`` for ``_Panels`` (the AVX-512 loop where the CPU has it)."""
    module = _f16()
    if request.param and not module.avx512():
        pytest.skip("no AVX-512 on this CPU: only the AVX2 loop can run")
    return request.param


@pytest.mark.parametrize("shape", [(960, 576), (40, 7), (16, 1), (3, 33)])  # 40, 3: a partial last panel
@pytest.mark.parametrize("bias", [False, True])
def test_own_float16_kernel_is_the_product_of_the_rounded_weights(shape, bias, loop):
    """Every row count of a decoding step or a prefill (0 to 30 rows: in tiles of up to 12 rows,
    split in two past 6 in the AVX2 loop) gives x @ float16(weight).T + bias, summed in float32:
    within float32's rounding of the float64 product."""
    n, k = shape
    gen = torch.Generator().manual_seed(n + k)
    weight, b = torch.randn(n, k, generator=gen) * 0.05, torch.randn(n, generator=gen) if bias else None
    panels = cpu_linear._Panels(weight, b, avx512=loop)
    rounded = weight.half().double()
    for rows in list(range(0, 15)) + [23, 24, 25, 30]:
        x = torch.randn(rows, k, generator=gen)
        expected = x.double() @ rounded.T + (b.double() if bias else 0)
        got = panels(x)
        assert got.shape == (rows, n) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * k ** 0.5)


def test_own_float16_kernel_writes_nothing_past_its_output(loop):
    """The product writes exactly rows x n floats, partial last panels included: the memory after
    the output (and the output's own padding columns) keeps its marker."""
    module = _f16()
    gen = torch.Generator().manual_seed(6)
    for n in (1, 15, 16, 17, 31, 33, 50):
        for bias in (False, True):
            weight, b = torch.randn(n, 9, generator=gen), torch.randn(n, generator=gen) if bias else None
            panels = cpu_linear._Panels(weight, b, avx512=loop)
            for rows in (1, 5, 7, 12, 13, 25):
                x = torch.randn(rows, 9, generator=gen)
                out = torch.full((rows * n + 64,), float("nan"))
                module.product(x.data_ptr(), rows, 9, panels.data.data_ptr(), 0 if b is None else b.data_ptr(),
                               out.data_ptr(), n, loop)
                assert out[rows * n:].isnan().all(), (n, rows)
                torch.testing.assert_close(out[:rows * n].view(rows, n), panels(x))


def test_own_float16_kernel_refuses_what_this_cpu_cannot_run():
    """The AVX-512 loop on a CPU without AVX-512 raises instead of running an illegal instruction;
    so do bad sizes and null addresses."""
    module = _f16()
    x, y = torch.ones(1, 4), torch.empty(1, 16)
    panels = cpu_linear._Panels(torch.ones(16, 4), avx512=False)
    with pytest.raises(ValueError, match="negative size"):
        module.product(x.data_ptr(), -1, 4, panels.data.data_ptr(), 0, y.data_ptr(), 16, False)
    with pytest.raises(ValueError, match="null address"):
        module.product(0, 1, 4, panels.data.data_ptr(), 0, y.data_ptr(), 16, False)
    if module.avx512():
        return  # both loops run here (see test_own_float16_kernels_avx2_and_avx512_loops_give_the_same_bits)
    with pytest.raises(RuntimeError, match="AVX-512"):
        module.product(x.data_ptr(), 1, 4, panels.data.data_ptr(), 0, y.data_ptr(), 16, True)


def test_own_float16_kernel_gives_a_row_the_same_bits_in_any_call(loop):
    """A row's result does not depend on how many rows share its call or where it sits."""
    gen = torch.Generator().manual_seed(3)
    panels = cpu_linear._Panels(torch.randn(200, 576, generator=gen) * 0.05, torch.randn(200, generator=gen),
                                avx512=loop)
    x = torch.randn(30, 576, generator=gen)
    alone = torch.cat([panels(x[i:i + 1]) for i in range(len(x))])
    for m in range(2, len(x) + 1):
        assert torch.equal(panels(x[:m]), alone[:m]), m
        assert torch.equal(panels(x[len(x) - m:]), alone[len(x) - m:]), m
    assert cpu_linear._rows_independent(True)


def test_own_float16_kernel_takes_any_input_layout_and_saturates_like_fbgemm(loop):
    """3-D and non-contiguous float inputs are read as their values; weights beyond float16's range
    saturate at +-65504 (as fbgemm's packing does), not infinity."""
    weight = torch.tensor([[1e6, 0.0, 0.5], [-1e6, 1.0, 0.25]])
    panels = cpu_linear._Panels(weight, avx512=loop)
    x = torch.tensor([[1.0, 2.0, 4.0]])
    assert panels(x).tolist() == [[65504.0 + 2.0, -65504.0 + 2.0 + 1.0]]
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(24, 10, generator=gen)
    panels = cpu_linear._Panels(weight, avx512=loop)
    x = torch.randn(2, 10, 3, generator=gen).transpose(1, 2)  # (2, 3, 10), not contiguous
    expected = F.linear(x.double(), weight.half().double())
    torch.testing.assert_close(panels(x).double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(panels(x.double()).double(), expected, rtol=1e-5, atol=1e-5)


def test_float16_layers_use_the_own_kernel_only_on_one_thread():
    """The service packs on one thread: there its layers are served by _f16, with the AVX-512 loop
    where the CPU has it; on more threads fbgemm's threaded kernels serve them. Outputs agree
    within float16 rounding."""
    module = _f16()
    with torch_threads(1):
        assert cpu_linear.own_float16_kernel()
        one = _attention_like()
        assert cpu_linear.install_float16(one)
    with torch_threads(2):
        assert not cpu_linear.own_float16_kernel()
        two = _attention_like()
        two.load_state_dict(one.state_dict())
        assert cpu_linear.install_float16(two)
    packed = one.q_proj._stacked.product.keywords["packed"]
    assert isinstance(packed, cpu_linear._Panels) and packed.avx512 == module.avx512()
    assert not isinstance(two.q_proj._stacked.product.keywords["packed"], cpu_linear._Panels)
    x = torch.randn(7, 32)
    with torch.inference_mode():
        for name in ("q_proj", "k_proj", "v_proj"):
            torch.testing.assert_close(getattr(one, name)(x), getattr(two, name)(x), rtol=1e-5, atol=1e-5)


def test_own_float16_kernels_avx2_and_avx512_loops_give_the_same_bits():
    """Where the CPU has AVX-512 its loop serves; the AVX2 loop reads the same panels (16 features)
    and sums every value in the same order, so the two agree bit for bit, partial panels included."""
    module = _f16()
    if not module.avx512():
        pytest.skip("no AVX-512 on this CPU: only the AVX2 loop can run")
    gen = torch.Generator().manual_seed(5)
    for n, k in [(960, 576), (40, 7), (16, 1), (3, 33), (48, 20), (80, 64)]:
        weight, bias = torch.randn(n, k, generator=gen) * 0.05, torch.randn(n, generator=gen)
        avx512 = cpu_linear._Panels(weight, bias)
        assert avx512.avx512 and avx512.data.shape == (-(-n // 16), k, 16)
        avx2 = cpu_linear._Panels(weight, bias, avx512=False)
        assert torch.equal(avx2.data, avx512.data)
        for rows in (1, 2, 4, 6, 7, 11, 12, 13, 25, 40):
            x = torch.randn(rows, k, generator=gen)
            assert torch.equal(avx512(x), avx2(x)), (n, k, rows)
