"""detector.hooks on the toy trainer of test_train_loop.py (one weight, loss w^2, lr 0.1: w = 0.8^steps).

The engine's own tests (test_engine.py, test_engine_ddp.py, test_faults.py) run LogWindow,
DivergenceStop, PeriodicCheckpointer and FinalEvaluation (test_periodic_validation.py trains with
``val_period`` and scores the subset); PeriodicValidation's own timing is checked here: after every ``period``-th step
*before the last*, ``on_validate(step, {"val_AP": score()})`` with the model as that step left it,
its time excluded from the throughput."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from detector import hooks
from detector.hooks import PeriodicValidation
from tests.toy_trainer import toy_trainer


@pytest.mark.parametrize("start, last, period, want", [
    (0, 7, 2, [2, 4, 6]),
    (0, 6, 2, [2, 4]),  # not at the last step: the final evaluation scores it
    (3, 8, 2, [4, 6]),  # resumed at 3
    (0, 3, 5, []),
])
def test_validates_every_period_before_the_last_step(monkeypatch, start, last, period, want):
    clock = [100.0]
    monkeypatch.setattr(hooks, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    seen = []
    trainer = None

    def score():
        clock[0] += 0.25  # each validation takes 0.25 s on the hook's clock
        return float(trainer.model.w.detach()) ** 2

    trainer = toy_trainer([PeriodicValidation(period, score, lambda step, m: seen.append((step, m)))])
    trainer.train(start, last)
    assert [step for step, _ in seen] == want
    for step, m in seen:  # scored after the step: w = 0.8^(steps taken)
        assert list(m) == ["val_AP"] and m["val_AP"] == pytest.approx(0.64 ** (step - start))
    assert trainer.excluded_seconds == pytest.approx(0.25 * len(want))
