"""CollapseDetector and resolve_threshold on hand-made trajectories."""

from __future__ import annotations

import math

import pytest

from ncflow.collapse.detector import REPORTED_THRESHOLDS, CollapseDetector, resolve_threshold


def feed(detector: CollapseDetector, trajectory: list[tuple[int, float, float]], loss: float = 0.1) -> dict:
    """Feed (phase, nc1, fn) rows as global epochs 1, 2, ...; return {epoch: events} for epochs with events."""
    events = {}
    for epoch, (phase, nc1, fn) in enumerate(trajectory, start=1):
        happened = detector.update(epoch, phase, {"nc1": nc1, "fn": fn, "nc2": 0.3}, loss)
        if happened:
            events[epoch] = happened
    return events


# Epoch:        1           2            3             4              5              6
FALLING = [(1, 0.4, 9.0), (1, 0.3, 7.0), (2, 0.04, 3.0), (2, 0.015, 2.0), (2, 0.008, 1.1), (2, 0.002, 1.0)]


def test_threshold_crossing_records_t_nc_and_fn_star_at_each_eps() -> None:
    detector = CollapseDetector(threshold=0.01)
    events = feed(detector, FALLING)
    assert events == {5: ["collapsed"]}
    assert (detector.t_nc, detector.fn_star, detector.status) == (5, 1.1, "collapsed")
    # NC1 < 0.05 first at epoch 3 (0.04), < 0.02 at epoch 4 (0.015), < 0.01 at epoch 5 (0.008).
    assert [detector.at_threshold(eps) for eps in REPORTED_THRESHOLDS] == [(5, 1.1), (4, 2.0), (3, 3.0)]
    assert detector.summary_metrics() == {
        "collapse/threshold": 0.01,
        "collapse/T_NC": 5.0, "collapse/fn_star": 1.1,
        "collapse/eps_0.01/T_NC": 5.0, "collapse/eps_0.01/fn_star": 1.1,
        "collapse/eps_0.02/T_NC": 4.0, "collapse/eps_0.02/fn_star": 2.0,
        "collapse/eps_0.05/T_NC": 3.0, "collapse/eps_0.05/fn_star": 3.0,
    }


def test_collapse_in_phase_one_counts_and_nc1_equal_to_eps_does_not() -> None:
    detector = CollapseDetector(threshold=0.05)
    events = feed(detector, [(1, 0.05, 5.0), (1, 0.049, 4.0), (2, 0.01, 3.0)])
    assert events == {2: ["collapsed"]}
    assert (detector.t_nc, detector.fn_star) == (2, 4.0)


def test_an_unreported_threshold_is_tracked_too() -> None:
    detector = CollapseDetector(threshold=0.03)
    feed(detector, FALLING)
    assert detector.at_threshold(0.03) == (4, 2.0)  # 0.04 at epoch 3 is not below 0.03; 0.015 at epoch 4 is
    assert detector.summary_metrics()["collapse/T_NC"] == 4.0
    with pytest.raises(ValueError, match="eps"):
        detector.at_threshold(0.04)


def test_never_crossing_stays_not_collapsed() -> None:
    detector = CollapseDetector(threshold=0.01)
    events = feed(detector, [(1, 0.4, 9.0), (2, 0.03, 2.0), (2, 0.012, 1.5)])
    assert events == {}
    assert (detector.t_nc, detector.fn_star, detector.status) == (None, None, "not_collapsed")
    summary = detector.summary_metrics()
    assert "collapse/T_NC" not in summary and "collapse/fn_star" not in summary
    assert "collapse/eps_0.01/T_NC" not in summary
    assert summary["collapse/eps_0.02/T_NC"] == 3.0 and summary["collapse/eps_0.05/T_NC"] == 2.0


@pytest.mark.parametrize(
    ("arch", "depth", "activation", "expected"),
    [
        ("mlp", 5, "relu", 0.01),
        ("mlp", 7, "relu", 0.01),
        ("mlp", 3, "relu", 0.05),
        ("mlp", 2, "relu", 0.05),
        ("mlp", 5, "gelu", 0.05),
        ("mlp", 5, "tanh", 0.05),
        ("resnet20", 20, "relu", 0.01),
        ("resnet20", 3, "relu", 0.01),  # the depth rule is for MLPs only
    ],
)
def test_auto_threshold_rule(arch: str, depth: int, activation: str, expected: float) -> None:
    assert resolve_threshold("auto", arch, depth, activation) == expected


@pytest.mark.parametrize(("given", "expected"), [(0.02, 0.02), ("0.03", 0.03), (0.5, 0.5)])
def test_explicit_threshold_is_kept(given: float | str, expected: float) -> None:
    assert resolve_threshold(given, "mlp", 5, "relu") == expected


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.01, float("nan"), "automatic", "", True, None])
def test_bad_threshold_is_rejected_naming_the_parameter(bad: object) -> None:
    with pytest.raises(ValueError, match="nc1_threshold"):
        resolve_threshold(bad, "mlp", 5, "relu")  # type: ignore[arg-type]


def test_t_cross_counts_only_phase_two_and_predicts_t_cross_plus_lead() -> None:
    detector = CollapseDetector(threshold=0.01, fn_ref=1.5, lead=62)
    # fn < 1.5 already at Phase-1 epoch 2: ignored. First Phase-2 epoch with fn < 1.5 is epoch 5.
    trajectory = [(1, 0.5, 2.0), (1, 0.5, 1.2), (2, 0.3, 1.8), (2, 0.2, 1.5), (2, 0.1, 1.4), (2, 0.05, 1.3)]
    events = feed(detector, trajectory)
    assert events == {5: ["crossed"]}
    assert (detector.t_cross, detector.t_nc_pred) == (5, 67)
    summary = detector.summary_metrics()
    assert (summary["collapse/T_cross"], summary["collapse/T_NC_pred"], summary["collapse/fn_ref"]) == (5.0, 67.0, 1.5)


def test_collapse_and_crossing_in_the_same_epoch() -> None:
    detector = CollapseDetector(threshold=0.01, fn_ref=1.2, lead=10)
    assert feed(detector, [(2, 0.5, 3.0), (2, 0.005, 1.0)]) == {2: ["collapsed", "crossed"]}


def test_without_fn_ref_there_is_no_crossing() -> None:
    detector = CollapseDetector(threshold=0.01)
    feed(detector, FALLING)
    assert (detector.t_cross, detector.t_nc_pred) == (None, None)
    assert not {"collapse/T_cross", "collapse/T_NC_pred", "collapse/fn_ref"} & set(detector.summary_metrics())


def test_nan_loss_diverges_and_stays_diverged() -> None:
    detector = CollapseDetector(threshold=0.01)
    assert detector.update(1, 1, {"nc1": 0.4, "fn": 9.0}, loss=0.5) == []
    assert detector.update(2, 1, {"nc1": 0.3, "fn": 8.0}, loss=math.nan) == ["diverged"]
    assert detector.status == "diverged" and "loss" in (detector.divergence_reason or "")
    assert detector.update(3, 2, {"nc1": 0.001, "fn": 1.0}, loss=0.1) == []  # later collapse is ignored
    assert (detector.diverged, detector.status, detector.t_nc) == (True, "diverged", None)


def test_nan_nc1_is_divergence_never_collapse() -> None:
    detector = CollapseDetector(threshold=0.01)
    assert detector.update(1, 1, {"nc1": math.nan, "fn": 1.0}, loss=0.1) == ["diverged"]
    assert detector.t_nc is None and "nc1" in (detector.divergence_reason or "")


def test_high_nc1_diverges_only_after_epoch_300() -> None:
    detector = CollapseDetector(threshold=0.01)
    for epoch in range(1, 301):  # NC1 = 0.8 > 0.5 up to and including epoch 300 is not divergence
        assert detector.update(epoch, 1 if epoch <= 200 else 2, {"nc1": 0.8, "fn": 5.0}, loss=0.1) == []
    assert detector.status == "not_collapsed"
    assert detector.update(301, 2, {"nc1": 0.51, "fn": 5.0}, loss=0.1) == ["diverged"]
    assert "epoch 301" in (detector.divergence_reason or "")


def test_nc1_of_one_half_after_epoch_300_is_not_divergence() -> None:
    detector = CollapseDetector(threshold=0.01)
    assert detector.update(400, 2, {"nc1": 0.5, "fn": 5.0}, loss=0.1) == []
    assert not detector.diverged


def test_collapsed_then_diverged_reports_diverged_but_keeps_t_nc() -> None:
    detector = CollapseDetector(threshold=0.01)
    feed(detector, FALLING)
    assert detector.update(7, 2, {"nc1": 0.001, "fn": 1.0}, loss=math.inf) == ["diverged"]
    assert (detector.status, detector.t_nc) == ("diverged", 5)


def test_update_rejects_bad_input() -> None:
    detector = CollapseDetector(threshold=0.01)
    detector.update(3, 1, {"nc1": 0.4, "fn": 9.0}, loss=0.5)
    with pytest.raises(ValueError, match="epoch"):
        detector.update(3, 1, {"nc1": 0.4, "fn": 9.0}, loss=0.5)
    with pytest.raises(ValueError, match="phase"):
        detector.update(4, 3, {"nc1": 0.4, "fn": 9.0}, loss=0.5)
    with pytest.raises(ValueError, match="fn"):
        detector.update(4, 1, {"nc1": 0.4}, loss=0.5)
    with pytest.raises(ValueError, match="threshold"):
        CollapseDetector(threshold=0.0)
    with pytest.raises(ValueError, match="fn_ref"):
        CollapseDetector(threshold=0.01, fn_ref=-1.0)
