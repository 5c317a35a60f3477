"""python -m experiments.bench runs and writes its table. It asserts no time: benchmarks are not tests."""

from experiments.bench.__main__ import main


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
