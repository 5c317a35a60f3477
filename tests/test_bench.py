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
