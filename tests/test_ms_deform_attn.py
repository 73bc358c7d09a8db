"""Multi-scale deformable attention: the PyTorch path and the compiled CPU kernel against a naive
per-sample reference and against each other, gradcheck of the kernel's backward, the dispatcher,
the MSDeformAttn module, and bad-input errors from every path."""
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from mask2former.modeling.pixel_decoder.ops import backend
from mask2former.modeling.pixel_decoder.ops.functions import (
    MSDeformAttnFunction,
    ms_deform_attn,
    ms_deform_attn_core_pytorch,
)
from mask2former.modeling.pixel_decoder.ops.modules import MSDeformAttn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

requires_cpu_kernel = pytest.mark.skipif(
    not backend.has_cpu_kernel(),
    reason="the compiled CPU kernel is not built ({}); build it with "
    "`cd mask2former/modeling/pixel_decoder/ops && sh make.sh`".format(backend.kernel_load_error()),
)


def _cpu_kernel_isas():
    """The CPU kernel's variants this machine can run (each is tested)."""
    kernels = backend.load_kernels()
    if kernels is None:
        return ["not built"]
    return ["baseline"] + (["avx2+fma"] if kernels.cpu_kernel_isa() == "avx2+fma" else [])


@pytest.fixture(params=_cpu_kernel_isas())
def cpu_isa(request):
    """Runs the test once per instruction-set variant of the CPU kernel."""
    kernels = backend.load_kernels()
    if kernels is None:
        pytest.skip("the compiled CPU kernel is not built")
    kernels.set_cpu_kernel_isa(request.param)
    try:
        yield request.param
    finally:
        kernels.set_cpu_kernel_isa("auto")


def make_inputs(
    level_shapes, batch=2, heads=2, channels=3, queries=5, points=2, low=-0.25, high=1.25, dtype=torch.float64, seed=0
):
    """Random inputs; sampling locations in [low, high] so some samples fall (partly) outside the map."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(level_shapes, dtype=torch.int64)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cumsum(areas, 0) - areas
    levels = len(level_shapes)
    value = torch.randn(batch, int(areas.sum()), heads, channels, generator=g, dtype=dtype)
    locations = low + (high - low) * torch.rand(batch, queries, heads, levels, points, 2, generator=g, dtype=dtype)
    weights = torch.rand(batch, queries, heads, levels, points, generator=g, dtype=dtype)
    return value, shapes, starts, locations, weights


def random_case(seed):
    """Random sizes: non-square levels (1..7 x 1..7), odd channel counts, im2col_step below the batch."""
    g = torch.Generator().manual_seed(1000 + seed)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    levels = pick(1, 4)
    level_shapes = [(pick(1, 7), pick(1, 7)) for _ in range(levels)]
    kwargs = dict(batch=pick(3, 5), heads=pick(1, 3), channels=pick(1, 6), queries=pick(1, 9), points=pick(1, 4))
    im2col_step = pick(1, kwargs["batch"] - 1)
    return level_shapes, kwargs, im2col_step


def naive_ms_deform_attn(value, shapes, locations, weights):
    """Sample by sample, corner by corner: pixel coordinate = location * size - 0.5, corners outside
    the map count as zero (grid_sample's align_corners=False, zero padding)."""
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = locations.shape
    sizes = shapes.tolist()
    starts = [sum(h * w for h, w in sizes[:l]) for l in range(levels)]
    out = torch.zeros(batch, queries, heads, channels, dtype=value.dtype)
    for n in range(batch):
        for q in range(queries):
            for m in range(heads):
                for l, (height, width) in enumerate(sizes):
                    for p in range(points):
                        x = float(locations[n, q, m, l, p, 0]) * width - 0.5
                        y = float(locations[n, q, m, l, p, 1]) * height - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        fx, fy = x - x0, y - y0
                        corners = [
                            (y0, x0, (1 - fy) * (1 - fx)),
                            (y0, x0 + 1, (1 - fy) * fx),
                            (y0 + 1, x0, fy * (1 - fx)),
                            (y0 + 1, x0 + 1, fy * fx),
                        ]
                        for row, col, w in corners:
                            if 0 <= row < height and 0 <= col < width:
                                position = starts[l] + row * width + col
                                out[n, q, m] += float(weights[n, q, m, l, p]) * w * value[n, position, m]
    return out.reshape(batch, queries, heads * channels)


def run_kernel(value, shapes, starts, locations, weights, im2col_step=64):
    return MSDeformAttnFunction.apply(value, shapes, starts, locations, weights, im2col_step)


# ----------------------------------------------------------------------------------------------
# Forward against the naive reference and between paths


def test_pytorch_path_matches_naive_reference():
    value, shapes, starts, locations, weights = make_inputs([(3, 5), (4, 2), (1, 3)], points=3)
    expected = naive_ms_deform_attn(value, shapes, locations, weights)
    torch.testing.assert_close(ms_deform_attn_core_pytorch(value, shapes, locations, weights), expected, rtol=0, atol=1e-12)


@requires_cpu_kernel
def test_cpu_kernel_matches_naive_reference(cpu_isa):
    value, shapes, starts, locations, weights = make_inputs([(3, 5), (4, 2), (1, 3)], points=3)
    expected = naive_ms_deform_attn(value, shapes, locations, weights)
    torch.testing.assert_close(run_kernel(value, shapes, starts, locations, weights), expected, rtol=0, atol=1e-12)


def test_hand_computed_sample():
    # One 2x3 map, one sample at pixel coordinate (x, y) = (0.25, 0.5) (location (0.75/3, 1/2)):
    # 0.75 * 0.5 * v[0,0] + 0.25 * 0.5 * v[0,1] + 0.75 * 0.5 * v[1,0] + 0.25 * 0.5 * v[1,1], times weight 2.
    grid = torch.tensor([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]], dtype=torch.float64)
    value = grid.reshape(1, 6, 1, 1)
    shapes = torch.tensor([[2, 3]])
    locations = torch.tensor([0.75 / 3, 0.5], dtype=torch.float64).reshape(1, 1, 1, 1, 1, 2)
    weights = torch.full((1, 1, 1, 1, 1), 2.0, dtype=torch.float64)
    expected = 2.0 * (0.375 * 1 + 0.125 * 2 + 0.375 * 8 + 0.125 * 16)
    paths = [lambda: ms_deform_attn_core_pytorch(value, shapes, locations, weights)]
    if backend.has_cpu_kernel():
        paths.append(lambda: run_kernel(value, shapes, torch.tensor([0]), locations, weights))
    for path in paths:
        assert path().item() == pytest.approx(expected, abs=1e-12)


@requires_cpu_kernel
@pytest.mark.parametrize("seed", range(6))
def test_cpu_kernel_forward_matches_pytorch_fp64(seed, cpu_isa):
    level_shapes, kwargs, im2col_step = random_case(seed)
    value, shapes, starts, locations, weights = make_inputs(level_shapes, seed=seed, **kwargs)
    expected = ms_deform_attn_core_pytorch(value, shapes, locations, weights)
    actual = run_kernel(value, shapes, starts, locations, weights, im2col_step)
    assert actual.shape == (kwargs["batch"], kwargs["queries"], kwargs["heads"] * kwargs["channels"])
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-10)


@requires_cpu_kernel
def test_cpu_kernel_forward_larger_maps_fp64(cpu_isa):
    # Realistic channel count (32) and several non-square levels, batch 3 > im2col_step 2.
    value, shapes, starts, locations, weights = make_inputs(
        [(12, 17), (6, 9), (3, 5)], batch=3, heads=4, channels=32, queries=40, points=4
    )
    expected = ms_deform_attn_core_pytorch(value, shapes, locations, weights)
    torch.testing.assert_close(run_kernel(value, shapes, starts, locations, weights, 2), expected, rtol=0, atol=1e-10)


@requires_cpu_kernel
def test_cpu_kernel_fp32_close_to_fp64_reference(cpu_isa):
    value, shapes, starts, locations, weights = make_inputs([(9, 7), (5, 4)], heads=3, channels=16, queries=20, points=4)
    expected = ms_deform_attn_core_pytorch(value, shapes, locations, weights)
    actual = run_kernel(value.float(), shapes, starts, locations.float(), weights.float())
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)


@requires_cpu_kernel
def test_samples_entirely_outside_contribute_nothing():
    value, shapes, starts, locations, weights = make_inputs([(4, 6)])
    # pixel coordinate (x * 6 - 0.5, y * 4 - 0.5) beyond -1 or the size on one axis: no corner inside the map
    for axis, outside in ((0, -0.2), (0, 1.2), (1, -0.3), (1, 1.3)):
        far = torch.full_like(locations, 0.5)
        far[..., axis] = outside
        assert torch.count_nonzero(run_kernel(value, shapes, starts, far, weights)) == 0
        assert torch.count_nonzero(ms_deform_attn_core_pytorch(value, shapes, far, weights)) == 0


# ----------------------------------------------------------------------------------------------
# Backward


@requires_cpu_kernel
@pytest.mark.parametrize("seed", range(3))
def test_cpu_kernel_gradcheck(seed, cpu_isa):
    level_shapes, kwargs, im2col_step = random_case(seed)
    # gradcheck differentiates numerically element by element: keep the tensors small
    kwargs.update(
        batch=3, queries=min(kwargs["queries"], 3), heads=min(kwargs["heads"], 2), channels=min(kwargs["channels"], 3)
    )
    value, shapes, starts, locations, weights = make_inputs(level_shapes, seed=seed, **kwargs)
    inputs = tuple(t.requires_grad_() for t in (value, locations, weights))

    def fn(v, loc, w):
        return MSDeformAttnFunction.apply(v, shapes, starts, loc, w, min(im2col_step, 2))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@requires_cpu_kernel
def test_cpu_kernel_backward_matches_pytorch_autograd(cpu_isa):
    value, shapes, starts, locations, weights = make_inputs(
        [(10, 7), (5, 8), (2, 3)], batch=3, heads=4, channels=32, queries=30, points=4
    )
    grad_output = torch.randn(3, 30, 4 * 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    grads = []
    for compute in (
        lambda v, loc, w: run_kernel(v, shapes, starts, loc, w, 2),
        lambda v, loc, w: ms_deform_attn_core_pytorch(v, shapes, loc, w),
    ):
        inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
        grads.append(torch.autograd.grad(compute(*inputs), inputs, grad_output))
    for kernel_grad, reference_grad in zip(*grads):
        torch.testing.assert_close(kernel_grad, reference_grad, rtol=1e-9, atol=1e-9)


def pixel_centre_kink_case(dtype):
    """Sampling locations as the pixel decoder's encoder makes them at initialisation on a token's own
    level: a pixel centre (linspace(0.5, size - 0.5) / size, computed in `dtype`) plus whole-pixel
    offsets of up to 3 pixels in 8 directions, divided by the level's size. Query q samples around
    pixel q (modulo the level's area) on every level. Every pixel coordinate location * size - 0.5
    is then an integer up to rounding, i.e. on a kink of the bilinear interpolation, and some are
    exactly -1 (the outer edge of the first pixel)."""
    g = torch.Generator().manual_seed(11)
    level_shapes = [(6, 7), (3, 4), (2, 2)]
    shapes = torch.tensor(level_shapes)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cumsum(areas, 0) - areas
    centres = []
    for height, width in level_shapes:
        y, x = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, dtype=dtype),
            torch.linspace(0.5, width - 0.5, width, dtype=dtype),
            indexing="ij",
        )
        centres.append(torch.stack((x.reshape(-1) / width, y.reshape(-1) / height), -1))
    queries = centres[0].shape[0]
    reference_points = torch.stack([level_centres[torch.arange(queries) % len(level_centres)] for level_centres in centres], 1)
    directions = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=dtype)
    steps = torch.arange(1, 4, dtype=dtype)
    offsets = directions[:, None, :] * steps[None, :, None]  # (heads=8, points=3, 2) in pixels
    sizes = torch.stack([shapes[:, 1], shapes[:, 0]], -1).to(dtype)  # (L, 2) as (W, H)
    locations = reference_points[None, :, None, :, None, :] + offsets[None, None, :, None, :, :] / sizes[:, None, :]
    heads, levels, points = 8, len(level_shapes), 3
    value = torch.randn(1, int(areas.sum()), heads, 4, generator=g, dtype=dtype)
    weights = torch.rand(1, queries, heads, levels, points, generator=g, dtype=dtype)
    grad_output = torch.randn(1, queries, heads * 4, generator=g, dtype=dtype)
    return value, shapes, starts, locations.contiguous(), weights, grad_output


@requires_cpu_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_kernel_gradients_at_pixel_centre_kinks_match_grid_sample(dtype, cpu_isa):
    """At a kink the gradient w.r.t. the sampling location is one-sided, and which side depends on
    the last bit of the pixel coordinate: the kernel must round it as grid_sample does, whatever
    this PyTorch build does (fused multiply-add or not), including at the edges (coordinate -1)."""
    value, shapes, starts, locations, weights, grad_output = pixel_centre_kink_case(dtype)
    sizes = torch.stack([shapes[:, 1], shapes[:, 0]], -1).to(dtype)[:, None, :]
    pixel = locations * sizes - 0.5
    assert bool(((pixel - pixel.round()).abs() < 1e-4).all()), "the case must sample at kinks only"
    assert bool((pixel.round() == -1).any()) and bool(((pixel.round() >= 0) & (pixel.round() < sizes - 1)).any())

    results = []
    for compute in (
        lambda v, loc, w: run_kernel(v, shapes, starts, loc, w),
        lambda v, loc, w: ms_deform_attn_core_pytorch(v, shapes, loc, w),
    ):
        inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
        out = compute(*inputs)
        results.append([out.detach(), *torch.autograd.grad(out, inputs, grad_output)])
    (out, grad_value, grad_loc, grad_weights), expected = results[0], results[1]
    # A gradient from the wrong side of a kink differs by O(1); rounding alone stays within a few ulps.
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_loc, expected[2], **tol)
    torch.testing.assert_close(out, expected[0], **tol)
    torch.testing.assert_close(grad_value, expected[1], **tol)
    torch.testing.assert_close(grad_weights, expected[3], **tol)


@requires_cpu_kernel
def test_cpu_kernel_follows_grid_sample_of_baseline_pytorch_build():
    """PyTorch's AVX2/AVX512 grid_sample rounds its pixel coordinate with a fused multiply-add and
    its baseline build does not. Where this process runs a vectorised build, check the kink test in a
    process forced to the baseline (ATEN_CPU_CAPABILITY=default) too."""
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("this process already runs PyTorch's baseline CPU kernels")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1", ATEN_CPU_CAPABILITY="default")
    test = "{}::test_cpu_kernel_gradients_at_pixel_centre_kinks_match_grid_sample".format(os.path.abspath(__file__))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


@requires_cpu_kernel
def test_cpu_kernel_many_samples_per_query(cpu_isa):
    # 4 levels x 20 points = 80 samples per query and head, more than the kernel gathers at once (64).
    value, shapes, starts, locations, weights = make_inputs(
        [(5, 7), (4, 3), (2, 6), (1, 1)], batch=2, heads=2, channels=12, queries=6, points=20
    )
    grad_output = torch.randn(2, 6, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = []
    for compute in (
        lambda v, loc, w: run_kernel(v, shapes, starts, loc, w),
        lambda v, loc, w: ms_deform_attn_core_pytorch(v, shapes, loc, w),
    ):
        inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
        out = compute(*inputs)
        results.append([out.detach(), *torch.autograd.grad(out, inputs, grad_output)])
    for kernel_result, reference in zip(*results):
        torch.testing.assert_close(kernel_result, reference, rtol=1e-9, atol=1e-10)


@requires_cpu_kernel
def test_cpu_kernel_isa_choice():
    kernels = backend.load_kernels()
    assert kernels.cpu_kernel_isa() in ("baseline", "avx2+fma")
    with pytest.raises(RuntimeError, match="set_cpu_kernel_isa"):
        kernels.set_cpu_kernel_isa("sse9")


@requires_cpu_kernel
def test_cpu_kernel_backward_single_thread_equals_parallel():
    # The value gradient is scattered by tasks that own disjoint slices: the split must not matter.
    value, shapes, starts, locations, weights = make_inputs([(8, 9), (4, 5)], batch=1, heads=1, channels=48, queries=25)
    grad_output = torch.randn(1, 25, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    kernels = backend.load_kernels()
    threads = torch.get_num_threads()
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        try:
            results.append(kernels.ms_deform_attn_backward(value, shapes, starts, locations, weights, grad_output, 64))
        finally:
            torch.set_num_threads(threads)
    for single, parallel in zip(*results):
        torch.testing.assert_close(single, parallel, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Non-contiguous inputs


@pytest.mark.parametrize("path", ["pytorch", "cpu"])
def test_non_contiguous_inputs(path):
    if path == "cpu" and not backend.has_cpu_kernel():
        pytest.skip("the compiled CPU kernel is not built")
    value, shapes, starts, locations, weights = make_inputs([(4, 3), (2, 5)], heads=3, points=3)
    expected = naive_ms_deform_attn(value, shapes, locations, weights)
    # Same values, other memory layouts.
    value_nc = value.transpose(2, 3).contiguous().transpose(2, 3)
    locations_nc = torch.stack([locations, torch.zeros_like(locations)], -1)[..., 0]
    weights_nc = weights.permute(4, 3, 2, 1, 0).contiguous().permute(4, 3, 2, 1, 0)
    shapes_nc = shapes.t().contiguous().t()
    assert not any(t.is_contiguous() for t in (value_nc, locations_nc, weights_nc, shapes_nc))
    with backend.use_backend(path):
        actual = ms_deform_attn(value_nc, shapes_nc, starts, locations_nc, weights_nc)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Bad input: a clear error naming the tensors, from every path


def _bad_cases():
    value, shapes, starts, locations, weights = make_inputs([(3, 4), (2, 2)], points=2)
    good = dict(value=value, shapes=shapes, starts=starts, locations=locations, weights=weights)
    return {
        "levels": (dict(good, locations=locations[:, :, :, :1]), "sampling_locations"),
        "heads": (dict(good, weights=weights[:, :, :1]), "attention_weights"),
        "points": (dict(good, weights=weights[..., :1]), "attention_weights"),
        "batch": (dict(good, locations=locations[:1], weights=weights[:1]), "sampling_locations"),
        "positions": (dict(good, value=value[:, :-1]), "value_spatial_shapes"),
        "start_index": (dict(good, starts=torch.tensor([0, 11])), "value_level_start_index"),
        "start_index_length": (dict(good, starts=starts[:1]), "value_level_start_index"),
        "shapes_columns": (dict(good, shapes=shapes[:, :1]), "value_spatial_shapes"),
        "value_dims": (dict(good, value=value[0]), "value"),
        "dtype_mix": (dict(good, weights=weights.float()), "attention_weights"),
    }


BAD_CASES = _bad_cases()


@pytest.mark.parametrize("case", sorted(BAD_CASES))
@pytest.mark.parametrize("path", ["pytorch", "cpu", "function", "extension"])
def test_bad_inputs_raise_clear_errors(case, path):
    if path != "pytorch" and not backend.has_cpu_kernel():
        pytest.skip("the compiled CPU kernel is not built")
    inputs, name = BAD_CASES[case]
    args = (inputs["value"], inputs["shapes"], inputs["starts"], inputs["locations"], inputs["weights"])
    if path == "extension":
        # The compiled module checks its inputs itself: direct callers get errors, not crashes.
        with pytest.raises(RuntimeError, match=name):
            backend.load_kernels().ms_deform_attn_forward(*args, 64)
    elif path == "function":
        with pytest.raises(ValueError, match=name):
            MSDeformAttnFunction.apply(*args, 64)
    else:
        with backend.use_backend(path), pytest.raises(ValueError, match=name):
            ms_deform_attn(*args)


@requires_cpu_kernel
def test_extension_backward_checks_grad_output_shape():
    value, shapes, starts, locations, weights = make_inputs([(3, 4)])
    wrong = torch.zeros(2, 5, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="grad_output"):
        backend.load_kernels().ms_deform_attn_backward(value, shapes, starts, locations, weights, wrong, 64)


@pytest.mark.parametrize("step", [0, -1, 1.5])
def test_bad_im2col_step(step):
    value, shapes, starts, locations, weights = make_inputs([(3, 4)])
    with pytest.raises(ValueError, match="im2col_step"):
        ms_deform_attn(value, shapes, starts, locations, weights, step)


# ----------------------------------------------------------------------------------------------
# Dispatch


def _ran_kernel(output):
    return type(output.grad_fn).__name__.startswith("MSDeformAttnFunction")


def _requires_grad_inputs():
    value, shapes, starts, locations, weights = make_inputs([(3, 4), (2, 3)])
    return value.requires_grad_(), shapes, starts, locations, weights


def test_backend_setter_and_env_var(monkeypatch):
    monkeypatch.delenv(backend.BACKEND_ENV_VAR, raising=False)
    assert backend.get_backend() == "auto"
    monkeypatch.setenv(backend.BACKEND_ENV_VAR, "PyTorch")
    assert backend.get_backend() == "pytorch"
    with backend.use_backend("cpu"):
        assert backend.get_backend() == "cpu"
    assert backend.get_backend() == "pytorch"
    monkeypatch.setenv(backend.BACKEND_ENV_VAR, "fast")
    with pytest.raises(ValueError, match=backend.BACKEND_ENV_VAR):
        backend.get_backend()
    with pytest.raises(ValueError, match="set_backend"):
        backend.set_backend("gpu")


def test_forced_pytorch_path_runs_pytorch(monkeypatch):
    monkeypatch.setenv(backend.BACKEND_ENV_VAR, "pytorch")
    assert not _ran_kernel(ms_deform_attn(*_requires_grad_inputs()))


@requires_cpu_kernel
def test_auto_and_forced_cpu_run_the_cpu_kernel(monkeypatch):
    monkeypatch.delenv(backend.BACKEND_ENV_VAR, raising=False)
    assert backend.select_backend("cpu") == "cpu"
    assert _ran_kernel(ms_deform_attn(*_requires_grad_inputs()))
    monkeypatch.setenv(backend.BACKEND_ENV_VAR, "cpu")
    assert _ran_kernel(ms_deform_attn(*_requires_grad_inputs()))


def test_forcing_cuda_with_cpu_tensors_fails_clearly():
    with backend.use_backend("cuda"), pytest.raises(RuntimeError, match="forced to the cuda kernel"):
        ms_deform_attn(*_requires_grad_inputs())


@pytest.fixture
def without_kernels(monkeypatch):
    """Behave as if the extension were not built."""
    monkeypatch.setattr(backend, "_kernels_loaded", True)
    monkeypatch.setattr(backend, "_kernels", None)
    monkeypatch.setattr(backend, "_kernel_error", "ModuleNotFoundError: No module named 'mask2former_msda_kernels'")
    monkeypatch.setattr(backend, "_reported", set())
    monkeypatch.delenv(backend.BACKEND_ENV_VAR, raising=False)


def test_auto_falls_back_to_pytorch_with_one_warning(without_kernels, caplog):
    with caplog.at_level(logging.INFO, logger=backend.__name__):
        first = ms_deform_attn(*_requires_grad_inputs())
        second = ms_deform_attn(*_requires_grad_inputs())
    assert not _ran_kernel(first) and not _ran_kernel(second)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "make.sh" in warnings[0].getMessage()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "pure-PyTorch" in infos[0]
    assert backend.available_backends() == ["pytorch"]


def test_forced_kernel_without_extension_fails_clearly(without_kernels):
    with backend.use_backend("cpu"), pytest.raises(RuntimeError, match="not available.*make.sh"):
        ms_deform_attn(*_requires_grad_inputs())
    with pytest.raises(RuntimeError, match="cannot be loaded"):
        MSDeformAttnFunction.apply(*_requires_grad_inputs(), 64)


def test_module_works_without_extension(without_kernels):
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    shapes = torch.tensor([[3, 4], [2, 2]])
    x = torch.randn(1, 16, 16)
    out = module(x, torch.rand(1, 16, 2, 2), x, shapes, torch.tensor([0, 12]))
    assert out.shape == (1, 16, 16)


def test_import_never_needs_the_extension():
    # A fresh interpreter where the compiled module cannot be imported at all.
    code = (
        "import sys; sys.modules['mask2former_msda_kernels'] = None\n"
        "import torch\n"
        "from mask2former.modeling.pixel_decoder.ops.modules import MSDeformAttn\n"
        "from mask2former.modeling.pixel_decoder.ops.functions import MSDeformAttnFunction, ms_deform_attn_core_pytorch\n"
        "m = MSDeformAttn(16, 1, 2, 1); x = torch.randn(1, 6, 16)\n"
        "for _ in range(2): m(x, torch.rand(1, 6, 1, 2), x, torch.tensor([[2, 3]]), torch.tensor([0]))\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS="1")
    env.pop(backend.BACKEND_ENV_VAR, None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert result.stderr.count("no compiled CPU kernel") == 1


# ----------------------------------------------------------------------------------------------
# Mixed precision


@pytest.mark.parametrize("path", ["pytorch", "cpu"])
def test_autocast_runs_in_float32(path):
    if path == "cpu" and not backend.has_cpu_kernel():
        pytest.skip("the compiled CPU kernel is not built")
    value, shapes, starts, locations, weights = make_inputs([(4, 5), (2, 3)], dtype=torch.float32)
    with backend.use_backend(path), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ms_deform_attn(value.bfloat16(), shapes, starts, locations, weights)
    assert out.dtype == torch.float32
    # only value went through bfloat16 (3 significant digits); everything after it is float32
    torch.testing.assert_close(
        out.double(),
        naive_ms_deform_attn(value.bfloat16().double(), shapes, locations.double(), weights.double()),
        rtol=1e-5,
        atol=1e-6,
    )


def test_half_inputs_outside_autocast_keep_their_dtype():
    value, shapes, starts, locations, weights = make_inputs([(4, 5)], dtype=torch.float32)
    out = ms_deform_attn(value.half(), shapes, starts, locations.half(), weights.half())
    assert out.dtype == torch.float16
    expected = naive_ms_deform_attn(
        value.half().double(), shapes, locations.half().double(), weights.half().double()
    )
    torch.testing.assert_close(out.double(), expected, rtol=2e-3, atol=2e-3)


# ----------------------------------------------------------------------------------------------
# The MSDeformAttn module


def test_module_parameters_match_upstream_checkpoint_layout():
    # Names, order and shapes of an R50 pixel-decoder encoder layer's self_attn (golden key list).
    module = MSDeformAttn(d_model=256, n_levels=3, n_heads=8, n_points=4)
    prefix = "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn."
    keys_file = os.path.join(REPO_ROOT, "tests", "data", "golden", "keys", "coco_panoptic_maskformer2_R50_bs16_50ep.txt")
    expected = []
    with open(keys_file) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if fields[0].startswith(prefix):
                expected.append((fields[0][len(prefix):], fields[1]))
    assert expected, "no self_attn keys in " + keys_file
    actual = [(name, str(tuple(t.shape))) for name, t in module.state_dict().items()]
    assert actual == expected


def test_module_initialisation():
    torch.manual_seed(0)
    heads, levels, points = 8, 3, 4
    module = MSDeformAttn(d_model=64, n_levels=levels, n_heads=heads, n_points=points)
    assert torch.count_nonzero(module.sampling_offsets.weight) == 0
    assert torch.count_nonzero(module.attention_weights.weight) == 0
    assert torch.count_nonzero(module.attention_weights.bias) == 0
    bias = module.sampling_offsets.bias.detach().view(heads, levels, points, 2)
    # head h points along angle 2*pi*h/8, scaled so that its larger coordinate is 1; point i at (i+1) times that
    unit = {0: (1, 0), 1: (1, 1), 2: (0, 1), 3: (-1, 1), 4: (-1, 0), 5: (-1, -1), 6: (0, -1), 7: (1, -1)}
    for h, (dx, dy) in unit.items():
        for i in range(points):
            for level in range(levels):
                torch.testing.assert_close(
                    bias[h, level, i], torch.tensor([dx * (i + 1.0), dy * (i + 1.0)]), rtol=1e-6, atol=1e-6
                )
    for proj in (module.value_proj, module.output_proj):
        assert torch.count_nonzero(proj.bias) == 0
        bound = math.sqrt(6.0 / (64 + 64))  # xavier_uniform
        assert proj.weight.abs().max() <= bound and proj.weight.abs().max() > 0.9 * bound


def test_module_rejects_bad_configuration():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=30, n_heads=8)
    with pytest.warns(UserWarning, match="power of 2"):
        MSDeformAttn(d_model=24, n_heads=2)


def _identity_module(levels=1, points=1, heads=1, d_model=4):
    """Identity projections, zero offsets, uniform attention: the output is the average of the
    values sampled at the reference points."""
    module = MSDeformAttn(d_model=d_model, n_levels=levels, n_heads=heads, n_points=points)
    with torch.no_grad():
        for proj in (module.value_proj, module.output_proj):
            proj.weight.copy_(torch.eye(d_model))
            proj.bias.zero_()
        module.sampling_offsets.bias.zero_()
    return module.double()


@pytest.mark.parametrize("path", ["pytorch", "cpu"])
def test_module_samples_where_the_offsets_point(path):
    if path == "cpu" and not backend.has_cpu_kernel():
        pytest.skip("the compiled CPU kernel is not built")
    # One level of 4 x 6, every channel = the column index: bilinear sampling returns the pixel x
    # coordinate itself, so the output tells where the sample landed.
    height, width = 4, 6
    column = torch.arange(width, dtype=torch.float64).repeat(height)
    input_flatten = column[None, :, None].repeat(1, 1, 4)
    shapes, starts = torch.tensor([[height, width]]), torch.tensor([0])
    query = torch.zeros(1, 3, 4, dtype=torch.float64)
    module = _identity_module()
    with torch.no_grad():
        module.sampling_offsets.bias.copy_(torch.tensor([1.5, 0.0]))  # 1.5 pixels to the right
    # reference at pixel x = 1.0, 2.0, 3.25 (location = (x + 0.5) / width), mid-height
    xs = torch.tensor([1.0, 2.0, 3.25], dtype=torch.float64)
    reference_points = torch.stack([(xs + 0.5) / width, torch.full_like(xs, 0.5)], -1)[None, :, None, :]
    # box reference (x, y, w, h): offset scaled by w * 0.5 / n_points = 0.125 -> 1.5 * 0.125 = 0.1875 of the image width
    boxes = torch.cat([reference_points, torch.full_like(reference_points, 0.25)], -1)
    with backend.use_backend(path):
        out_points = module(query, reference_points, input_flatten, shapes, starts)
        out_boxes = module(query, boxes, input_flatten, shapes, starts)
    torch.testing.assert_close(out_points[0, :, 0], xs + 1.5)
    torch.testing.assert_close(out_boxes[0, :, 0], xs + 0.1875 * width)


@pytest.mark.parametrize("path", ["pytorch", "cpu"])
def test_module_averages_levels_and_honours_padding_mask(path):
    if path == "cpu" and not backend.has_cpu_kernel():
        pytest.skip("the compiled CPU kernel is not built")
    module = _identity_module(levels=2, points=2, heads=2, d_model=4)
    shapes, starts = torch.tensor([[2, 3], [1, 2]]), torch.tensor([0, 6])
    g = torch.Generator().manual_seed(0)
    input_flatten = torch.randn(1, 8, 4, generator=g, dtype=torch.float64)
    # reference: centre of pixel (row 1, col 2) of level 0 and of pixel (0, 1) of level 1
    reference_points = torch.tensor([[[[2.5 / 3, 1.5 / 2], [1.5 / 2, 0.5]]]], dtype=torch.float64)
    query = torch.randn(1, 1, 4, generator=g, dtype=torch.float64)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 7] = True  # level 1, pixel (0, 1)
    with backend.use_backend(path):
        out = module(query, reference_points, input_flatten, shapes, starts)
        masked = module(query, reference_points, input_flatten, shapes, starts, mask)
    level0, level1 = input_flatten[0, 5], input_flatten[0, 7]
    torch.testing.assert_close(out[0, 0], (level0 + level1) / 2)
    torch.testing.assert_close(masked[0, 0], level0 / 2)


@requires_cpu_kernel
def test_module_kernel_and_pytorch_paths_agree_with_gradients():
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=3).double()
    with torch.no_grad():
        module.sampling_offsets.weight.normal_(0, 0.1)
        module.attention_weights.weight.normal_(0, 0.1)
    shapes = torch.tensor([[6, 8], [3, 4], [2, 2]])
    starts = torch.tensor([0, 48, 60])
    x = torch.randn(2, 64, 32, dtype=torch.float64)
    reference_points = torch.rand(2, 64, 3, 2, dtype=torch.float64)
    results = []
    for path in ("cpu", "pytorch"):
        module.zero_grad()
        with backend.use_backend(path):
            out = module(x, reference_points, x, shapes, starts)
        out.pow(2).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in module.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-10)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "what, kwargs, match",
    [
        ("query", dict(query=torch.zeros(1, 5, 8)), "query"),
        ("reference dim", dict(reference_points=torch.zeros(1, 5, 2, 3)), "Last dim of reference_points"),
        ("reference levels", dict(reference_points=torch.zeros(1, 5, 1, 2)), "reference_points"),
        ("input", dict(input_flatten=torch.zeros(1, 16, 8)), "input_flatten"),
        ("mask", dict(input_padding_mask=torch.zeros(1, 15, dtype=torch.bool)), "input_padding_mask"),
        ("shapes", dict(input_spatial_shapes=torch.tensor([[3, 4], [2, 3]])), "value_spatial_shapes"),
    ],
)
def test_module_bad_inputs(what, kwargs, match):
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    args = dict(
        query=torch.zeros(1, 5, 16),
        reference_points=torch.zeros(1, 5, 2, 2),
        input_flatten=torch.zeros(1, 16, 16),
        input_spatial_shapes=torch.tensor([[3, 4], [2, 2]]),
        input_level_start_index=torch.tensor([0, 12]),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        module(**args)


def test_module_softmax_matches_torch_softmax():
    from mask2former.modeling.pixel_decoder.ops.modules.ms_deform_attn import _softmax_last_dim

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 4, 12, generator=g, dtype=torch.float64) * 30
    x[0, 0, 0] += 1e4  # large logits must not overflow
    x.requires_grad_()
    grad = torch.randn(3, 7, 4, 12, generator=g, dtype=torch.float64)
    ours = _softmax_last_dim(x)
    reference = torch.softmax(x, -1)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(
        torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(reference, x, grad)[0], rtol=1e-10, atol=1e-12
    )


# ----------------------------------------------------------------------------------------------
# CUDA kernel (needs a GPU and an extension built with CUDA)

requires_cuda_kernel = pytest.mark.skipif(
    not (torch.cuda.is_available() and backend.has_cuda_kernel()),
    reason="needs a CUDA GPU and the extension built with CUDA (sh make.sh on a CUDA machine)",
)


@pytest.mark.gpu
@requires_cuda_kernel
@pytest.mark.parametrize("channels", [32, 3, 64])  # shuffle reduction; atomic fallback (not a power of 2; > warp)
def test_cuda_kernel_matches_pytorch_fp64(channels):
    value, shapes, starts, locations, weights = make_inputs(
        [(12, 17), (6, 9), (3, 5)], batch=3, heads=4, channels=channels, queries=50, points=4
    )
    cuda = [t.cuda() for t in (value, shapes, starts, locations, weights)]
    grad_output = torch.randn(3, 50, 4 * channels, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for compute, tensors in (
        (lambda v, loc, w: run_kernel(v, cuda[1], cuda[2], loc, w, 2), cuda),
        (lambda v, loc, w: ms_deform_attn_core_pytorch(v, shapes, loc, w), (value, shapes, starts, locations, weights)),
    ):
        inputs = [tensors[i].clone().requires_grad_() for i in (0, 3, 4)]
        out = compute(*inputs)
        grads = torch.autograd.grad(out, inputs, grad_output.to(out.device))
        results.append([t.detach().cpu() for t in (out, *grads)])
    for kernel_result, reference in zip(*results):
        torch.testing.assert_close(kernel_result, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
@requires_cuda_kernel
def test_cuda_kernel_gradcheck_and_fp32():
    value, shapes, starts, locations, weights = make_inputs([(3, 4), (2, 5)], batch=3, heads=2, channels=4, queries=3)
    shapes, starts = shapes.cuda(), starts.cuda()
    inputs = tuple(t.cuda().requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(
        lambda v, loc, w: MSDeformAttnFunction.apply(v, shapes, starts, loc, w, 2), inputs, eps=1e-6, atol=1e-5, rtol=1e-4
    )
    expected = ms_deform_attn_core_pytorch(value, shapes.cpu(), locations, weights)
    v32, loc32, w32 = (t.detach().float() for t in inputs)
    out32 = run_kernel(v32, shapes, starts, loc32, w32)
    torch.testing.assert_close(out32.double().cpu(), expected, rtol=1e-5, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.float16):
        out_amp = ms_deform_attn(v32.half(), shapes, starts, loc32, w32)
    assert out_amp.dtype == torch.float32
