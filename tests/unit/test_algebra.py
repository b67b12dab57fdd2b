"""Filter algebra: ⊛ against real convolutions, padding/cropping, module functions.

Tolerances: everything here runs in float64 and must agree with running the convolutions
to a relative 1e-12 (about 5000 ulps: sums of a few hundred products, no cancellation by
design); padding, cropping and resizing move values without arithmetic and are compared
with ``torch.equal``.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from conv_reference import relative_error, run_module
from hypothesis import given, settings
from hypothesis import strategies as st

from netmorph_cli.solver.algebra import (
    add,
    compose,
    crop_to,
    identity_filter,
    kernel_of,
    module_function,
    pad_to,
    resize,
)
from netmorph_cli.spec.graph import Edge, ModuleGraph
from netmorph_cli.spec.parse import load_spec

F64_TOL = 1e-12  # relative, float64: composed filter vs convolutions in series

odd = st.sampled_from([1, 3, 5])
kernels = st.tuples(odd, odd)
widths = st.integers(1, 5)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


# -- compose ------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(c_i=widths, c_l=widths, c_j=widths, k1=kernels, k2=kernels, seed=st.integers(0, 2**31))
def test_compose_equals_convolutions_in_series(c_i, c_l, c_j, k1, k2, seed):
    f1 = rand(c_l, c_i, *k1, seed=seed)
    f2 = rand(c_j, c_l, *k2, seed=seed + 1)
    x = rand(2, c_i, 13, 11, seed=seed + 2)
    h = compose(f2, f1)
    assert h.shape == (c_j, c_i, k1[0] + k2[0] - 1, k1[1] + k2[1] - 1)
    series = F.conv2d(F.conv2d(x, f1), f2)  # unpadded: only interior pixels survive
    assert relative_error(F.conv2d(x, h), series) <= F64_TOL


def test_compose_is_not_commutative_and_checks_channels():
    f1, f2 = rand(3, 2, 3, 3), rand(2, 3, 1, 3, seed=1)
    assert compose(f2, f1).shape == (2, 2, 3, 5)
    assert compose(f1, f2).shape == (3, 3, 3, 5)
    with pytest.raises(ValueError, match="cannot compose"):
        compose(f1, f1)  # F1 gives 3 channels, F1 takes 2


def test_compose_with_identity_is_exact():
    f = rand(4, 3, 3, 5)
    assert torch.equal(compose(identity_filter(4), f), f)
    assert torch.equal(compose(f, identity_filter(3)), f)


def test_compose_keeps_dtype_and_is_associative():
    a, b, c = rand(2, 3, 3, 3), rand(4, 2, 1, 3, seed=1), rand(3, 4, 3, 1, seed=2)
    left, right = compose(c, compose(b, a)), compose(compose(c, b), a)
    assert relative_error(left, right) <= F64_TOL
    assert compose(b.float(), a.float()).dtype == torch.float32


# -- padding, cropping, resizing --------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(k=kernels, grow=st.tuples(st.integers(0, 3), st.integers(0, 3)))
def test_pad_crop_round_trip(k, grow):
    f = rand(2, 3, *k)
    big = (k[0] + 2 * grow[0], k[1] + 2 * grow[1])
    p = pad_to(f, big)
    assert kernel_of(p) == big
    assert torch.equal(crop_to(p, k), f)
    assert torch.equal(resize(p, k), f)
    assert torch.equal(resize(f, big), p)
    # only zeros were added, and f sits centred
    assert torch.equal(p[..., big[0] // 2, big[1] // 2], f[..., k[0] // 2, k[1] // 2])
    ring = p.clone()
    ring[..., grow[0]:grow[0] + k[0], grow[1]:grow[1] + k[1]] = 0
    assert torch.count_nonzero(ring) == 0


def test_resize_mixed_directions():
    f = rand(2, 2, 1, 5)
    g = resize(f, (3, 1))  # grow the height, crop the width to the centre column
    assert kernel_of(g) == (3, 1)
    assert torch.equal(g[:, :, 1, 0], f[:, :, 0, 2])
    assert torch.count_nonzero(g[:, :, [0, 2], :]) == 0


@pytest.mark.parametrize("target", [(1, 3), (3, 1), (4, 5), (5, 4)])
def test_pad_to_refuses_smaller_or_off_centre_kernels(target):
    with pytest.raises(ValueError, match="cannot pad a 3×3 filter"):
        pad_to(rand(1, 1, 3, 3), target)


@pytest.mark.parametrize("target", [(5, 3), (3, 5), (2, 3), (1, 2)])
def test_crop_to_refuses_larger_or_off_centre_kernels(target):
    with pytest.raises(ValueError, match="cannot crop a 3×3 filter"):
        crop_to(rand(1, 1, 3, 3), target)


def test_add_in_the_extended_sense():
    a, b = rand(2, 2, 3, 1), rand(2, 2, 1, 5, seed=1)
    s = add(a, b)
    assert kernel_of(s) == (3, 5)
    assert torch.equal(s, add(b, a))
    expected = torch.zeros(2, 2, 3, 5, dtype=torch.float64)
    expected[:, :, :, 2:3] += a
    expected[:, :, 1:2, :] += b
    assert torch.equal(s, expected)
    # adding a 1×1 filter only touches the centre tap
    c = rand(2, 2, 3, 3, seed=2)
    d = add(c, identity_filter(2))
    assert torch.equal(d - c, pad_to(identity_filter(2), (3, 3)))


def test_identity_filter_is_the_identity_map():
    x = rand(1, 3, 9, 9)
    assert torch.equal(F.conv2d(x, identity_filter(3, (3, 5)))[0], x[0, :, 1:-1, 2:-2])


# -- module function ----------------------------------------------------------------------

def random_filters(graph: ModuleGraph, widths: dict[str, int], seed: int
                   ) -> dict[str, torch.Tensor]:
    return {e.name: rand(widths[e.dst], widths[e.src], *e.kernel, seed=seed + i)
            for i, e in enumerate(graph.edges)}


def check_against_convolutions(graph: ModuleGraph, filters: dict[str, torch.Tensor],
                               c_s: int, seed: int = 0) -> None:
    g = module_function(graph, filters)
    k = graph.effective_kernel()
    assert kernel_of(g) == k
    x = rand(2, c_s, k[0] + 6, k[1] + 4, seed=seed + 999)
    ref = run_module(graph, filters, x)
    assert ref.shape[-2:] == (7, 5)
    assert relative_error(F.conv2d(x, g), ref) <= F64_TOL


def test_module_function_of_d_equals_convolutions(examples_dir):
    graph = load_spec(examples_dir / "modules" / "D.json")
    widths = {"s": 3, "a": 5, "b": 4, "c": 6, "t": 2}
    check_against_convolutions(graph, random_filters(graph, widths, 7), 3)


def test_module_function_of_d_equals_equation_6(examples_dir):
    """G = F5 ⊛ F1 + F6 ⊛ (F3 ⊛ F1 + F4 ⊛ F2) + F7 ⊛ F2, written out by hand."""
    graph = load_spec(examples_dir / "modules" / "D.json")
    f = random_filters(graph, {"s": 2, "a": 3, "b": 3, "c": 3, "t": 2}, 11)
    eq6 = add(add(compose(f["F5"], f["F1"]),
                  compose(f["F6"], add(compose(f["F3"], f["F1"]), compose(f["F4"], f["F2"])))),
              compose(f["F7"], f["F2"]))
    assert relative_error(module_function(graph, f), eq6) <= F64_TOL


def random_module(seed: int) -> tuple[ModuleGraph, dict[str, int]]:
    """A random single-source single-sink DAG: every inner blob gets an edge from an
    earlier blob and one to a later blob, plus random extra (possibly parallel) edges."""
    g = torch.Generator().manual_seed(seed)

    def pick(n: int) -> int:
        return int(torch.randint(n, (1,), generator=g))

    n = 1 + pick(5)
    order = ["s"] + [f"b{i}" for i in range(n)] + ["t"]
    pairs = []
    for i in range(1, n + 1):
        pairs.append((order[pick(i)], order[i]))
        pairs.append((order[i], order[i + 1 + pick(n + 1 - i)]))
    for _ in range(pick(4)):
        i = pick(n + 1)
        pairs.append((order[i], order[i + 1 + pick(n + 1 - i)]))
    if pick(2):
        pairs.append(("s", "t"))
    edges = tuple(Edge(f"E{j}", u, v, (1 + 2 * pick(2), 1 + 2 * pick(3)))
                  for j, (u, v) in enumerate(pairs))
    widths = {b: 1 + pick(4) for b in order}
    graph = ModuleGraph("s", "t", edges, {b: widths[b] for b in order[1:-1]}).check()
    return graph, widths


@pytest.mark.parametrize("seed", range(25))
def test_module_function_of_random_dags_equals_convolutions(seed):
    graph, widths = random_module(seed)
    check_against_convolutions(graph, random_filters(graph, widths, seed), widths["s"], seed)


@pytest.mark.parametrize("seed", range(10))
def test_path_kernel_is_the_kernel_of_every_prefix(seed):
    from netmorph_cli.solver.algebra import prefix_filters

    graph, widths = random_module(seed)
    pre = prefix_filters(graph, random_filters(graph, widths, seed), widths["s"])
    pk = graph.kernel_reach()
    assert pk[graph.sink] == graph.effective_kernel()
    for b, k in pk.items():
        assert kernel_of(pre[b]) == k


def test_module_function_never_enumerates_paths():
    """40 diamonds in series: 2**40 paths. With 1-channel 1×1 filters a_i, b_i on the two
    arms (and 1 on the way out) the module function is Π (a_i + b_i)."""
    n = 40
    edges, values = [], {}
    blob = ["s"] + [f"j{i}" for i in range(1, n)] + ["t"]
    gen = torch.Generator().manual_seed(3)
    coef = 0.4 + 0.2 * torch.rand(n, 2, generator=gen, dtype=torch.float64)
    for i in range(n):
        for arm in range(2):
            mid = f"m{i}_{arm}"
            edges += [Edge(f"in{i}_{arm}", blob[i], mid, (1, 1)),
                      Edge(f"out{i}_{arm}", mid, blob[i + 1], (1, 1))]
            values[f"in{i}_{arm}"] = float(coef[i, arm])
            values[f"out{i}_{arm}"] = 1.0
    graph = ModuleGraph("s", "t", tuple(edges)).check()
    assert graph.path_count() == 2 ** n
    filters = {k: torch.full((1, 1, 1, 1), v, dtype=torch.float64) for k, v in values.items()}
    t0 = time.perf_counter()
    g = module_function(graph, filters)
    elapsed = time.perf_counter() - t0
    # a path enumeration would need 2**40 compositions; the DP does 160 tiny ones
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    expected = math.prod(float(a + b) for a, b in coef)
    assert g.shape == (1, 1, 1, 1)
    assert abs(float(g) - expected) <= F64_TOL * abs(expected)
