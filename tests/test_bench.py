"""python -m experiments.bench runs and writes its table. It asserts no time: benchmarks are not tests."""

import pytest
import torch

import torchbp
from experiments.bench import __main__ as bench_main
from experiments.bench.__main__ import main
from experiments.bench.cases import (
    PEER_NETWORKS,
    TRAINING_SETUPS,
    cnn_per_sample_floor,
    conv_weight_gradients_against_native,
    with_a_node_per_layer,
)
from experiments.bench.peers import PEERS, against, same_work


def test_the_benchmark_runs_a_case_and_writes_its_table(tmp_path):
    out = tmp_path / "bench.md"
    assert (
        main(
            [
                "--only",
                "derivation's 2-3-1 network, float64, fused",
                "--repeats",
                "4",
                "--warmup",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = [line for line in out.read_text().splitlines() if line.startswith("| training step")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[1] == "torchbp.fuse" and cells[2] == "native autograd"
    assert float(cells[5]) > 0  # the median ratio
    assert "MiB" in cells[9]  # peak memory, measured in fresh processes


def test_a_compiled_case_reports_its_compile_time_apart(tmp_path):
    out = tmp_path / "bench.md"
    only = "compiled training step, derivation's 2-3-1 network"
    assert main(["--only", only, "--repeats", "4", "--warmup", "1", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| compiled training step")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[1] == "torch.compile of torchbp per-layer" and cells[2] == "torch.compile of native"
    assert float(cells[5]) > 0
    a_seconds, b_seconds = (float(side.removesuffix(" s")) for side in cells[10].split(" / "))
    assert a_seconds > 0 and b_seconds > 0  # the first calls, which compile, timed apart


def custom_function_nodes(output):
    """The nodes of custom autograd Functions in the graph that ends in ``output``."""
    count, seen, stack = 0, set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += isinstance(node, torch.autograd.function.BackwardCFunction)
        stack += [next_node for next_node, _ in node.next_functions]
    return count


@pytest.mark.parametrize("setup", ["mid-layernorm", "mid-cross-entropy", "digits-cnn", "gpt"])
def test_the_floor_of_the_per_layer_path_is_native_with_as_many_function_nodes_as_torchbp(setup):
    model, loss_fn, x, y = TRAINING_SETUPS[setup]()
    floor_model = with_a_node_per_layer(model)  # a copy
    floor_loss = with_a_node_per_layer(loss_fn)(floor_model(x), y)
    hand_loss = torchbp.convert(loss_fn)(torchbp.convert(model)(x), y)
    native_loss = loss_fn(model(x), y)
    assert custom_function_nodes(native_loss) == 0
    assert custom_function_nodes(floor_loss) == custom_function_nodes(hand_loss) > 0
    assert torch.equal(floor_loss, native_loss)  # the same kernels: the same work, bit for bit
    floor_grads = torch.autograd.grad(floor_loss, list(floor_model.parameters()))
    native_grads = torch.autograd.grad(native_loss, list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(floor_grads, native_grads))


@pytest.mark.parametrize("setup, compiled", [("conv", False), ("digits-cnn", True)])
def test_the_compiled_convolutions_floor_times_the_same_weight_gradients_as_native(setup, compiled):
    hand, native = conv_weight_gradients_against_native(setup, compiled)()
    for ours, theirs in zip(hand(), native(), strict=True):
        # float32 sums of 32 × 32 × 32 terms in two orders: equal to a rounding of the largest entry
        torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-5 * float(theirs.abs().max()))


def test_the_per_sample_floor_computes_the_per_sample_gradients_torch_func_computes():
    floor, vmapped = cnn_per_sample_floor()()
    ours, theirs = floor(), vmapped()
    assert list(ours) == list(theirs)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5)


def test_a_case_whose_peer_is_not_installed_is_skipped_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_main, "installed", lambda peer: False)
    out = tmp_path / "bench.md"
    only = "per-sample grads, digits-cnn, batch 64, against BackPACK"
    assert main(["--only", only, "--repeats", "4", "--warmup", "1", "--out", str(out)]) == 0
    (row,) = [line for line in out.read_text().splitlines() if line.startswith("| per-sample grads")]
    assert "skipped: backpack is not installed" in row


def test_a_peer_row_refuses_a_peer_that_computes_other_values():
    ours = [torch.ones(4, 3), torch.ones(4)]
    same_work(ours, [torch.ones(4, 3), torch.ones(4)], "a peer")
    with pytest.raises(AssertionError, match="a peer differ"):
        same_work(ours, [torch.ones(4, 3), torch.full((4,), 1.01)], "a peer")
    with pytest.raises(AssertionError, match="expected 2 tensors, got 1"):
        same_work(ours, [torch.ones(4, 3)], "a peer")


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("kind", ["grads", "norms"])
def test_each_peer_computes_what_torchbp_computes(peer, kind):
    pytest.importorskip(PEERS[peer].module)
    hand, theirs = against(peer, kind, PEER_NETWORKS["digits-cnn, batch 64"])()  # make() compares the two once
    same_work(hand(), theirs(), peer)
