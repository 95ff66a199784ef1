import json

import pytest

from common import bench


def test_a_claim_that_holds_prints_its_margin(capsys):
    claim = bench.at_least("int8 faster than fp32", 2.3, 1.15)
    assert claim.held and claim.margin == pytest.approx(2.0)
    assert "held: int8 faster than fp32: 2.3 >= 1.15 (margin 2.00x)" in capsys.readouterr().out


def test_a_claim_that_fails_raises_with_what_was_measured():
    with pytest.raises(AssertionError, match=r"FAILED: load cost: 3 <= 2.5 \(margin 0.83x\)"):
        bench.at_most("load cost", 3.0, 2.5)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_measurement_that_is_not_a_positive_number_is_refused(bad):
    with pytest.raises(ValueError, match="positive finite"):
        bench.at_least("speed-up", bad, 1.5)


def test_claims_are_appended_to_the_log_when_asked(tmp_path, monkeypatch):
    log = tmp_path / "claims.jsonl"
    monkeypatch.setenv(bench.claims.LOG_ENV, str(log))
    bench.at_least("a", 3.0, 1.5)
    with pytest.raises(AssertionError):
        bench.at_most("b", 3.0, 1.5)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["name"], r["direction"], r["margin"]) for r in rows] == [("a", ">=", 2.0), ("b", "<=", 0.5)]
