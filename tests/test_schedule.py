import pytest

from repro.config import ScheduleConfig
from repro.schedule import Schedule


def run(cfg, errors, lr=0.01):
    s, lrs = Schedule(cfg, lr), []
    for epoch, err in enumerate(errors):
        lrs.append(s.step(epoch, err))
    return lrs


def test_plateau_drops_after_patience_epochs_without_improvement():
    cfg = ScheduleConfig(kind="plateau", patience=2, threshold=0.5, max_drops=3)
    # improves, improves, two flat epochs (drop), improves, then 0.3 gains (< threshold) x2 (drop)
    errors = [60, 55, 55.2, 54.8, 50, 49.7, 49.6, 49.1]
    lrs = run(cfg, errors)
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.0001, 0.0001])


def test_plateau_drops_at_most_max_drops_times():
    cfg = ScheduleConfig(kind="plateau", patience=1, threshold=0.0, max_drops=3)
    lrs = run(cfg, [50.0] * 10)
    assert lrs[-1] == pytest.approx(1e-5) and sum(a != b for a, b in zip(lrs, lrs[1:])) == 3
    assert Schedule(cfg, 0.01).step(0, 50) == 0.01       # the first epoch sets the best


def test_steps_and_state_round_trip():
    cfg = ScheduleConfig(kind="steps", milestones=[2, 4])
    assert run(cfg, [9, 8, 7, 6, 5]) == pytest.approx([0.01, 0.001, 0.001, 0.0001, 0.0001])
    a = Schedule(ScheduleConfig(patience=2), 0.01)
    for e, err in enumerate([50, 50, 49.95]):
        a.step(e, err)
    b = Schedule(ScheduleConfig(patience=2), 0.01)
    b.load_state_dict(a.state_dict())
    assert [a.step(3 + i, 50) for i in range(3)] == [b.step(3 + i, 50) for i in range(3)]
