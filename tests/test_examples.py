import pytest

from bench import overhead
from examples import prune_digits


@pytest.mark.slow
def test_prune_digits_runs_small():
    rows = prune_digits.main(["--quick"])
    names = [row[0] for row in rows]
    assert names == ["dense", "90.0%", "95.0%"]
    for (_, reached, accuracy, size), target in zip(rows[1:], (0.9, 0.95), strict=True):
        assert reached == pytest.approx(target, abs=1e-3)
        assert size < rows[0][3]
        assert 0.0 <= accuracy <= 1.0


@pytest.mark.slow
def test_overhead_bench_runs_small():
    results = overhead.main(["--quick", "--case", "c"])
    assert len(results) == 1
    assert all(wall > 0 and cpu > 0 for wall, cpu in results.values())
