"""detector.train_loop on a toy model (one weight, no data): the order hooks are called in, a stop
by a hook (the step untaken, the hooks after it skipped), and after_train when the loop raises.
The real hooks run through the engine: test_engine.py, test_engine_ddp.py; PeriodicValidation: test_hooks.py."""

from __future__ import annotations

import pytest

from detector.train_loop import DIVERGED, FINISHED, RUNNING, HookBase

from tests.toy_trainer import toy_trainer


def test_the_logged_gradient_norm_is_taken_before_clipping():
    # clipped to norm 1: step 1's gradient 2 becomes 1, w 1 -> 0.9, step 2's gradient is 1.8
    trainer = toy_trainer([], grad_clip=1.0)
    trainer.train(0, 1)
    assert trainer.values[-1] == pytest.approx(2.0) and float(trainer.model.w) == pytest.approx(0.9)
    trainer.train(1, 2)
    assert trainer.values[-1] == pytest.approx(1.8) and float(trainer.grad_norm) == pytest.approx(1.8)


POINTS = ("before_train", "before_step", "after_forward", "after_backward", "after_step", "after_train")


class Recorder(HookBase):
    """Records (name, point, step, iter, status) at every point; stops the run or raises at one."""

    def __init__(self, name: str, calls: list, stop_at: tuple = (), raise_at: tuple = ()):
        self.name, self.calls, self.stop_at, self.raise_at = name, calls, stop_at, raise_at

    def _hit(self, point: str) -> None:
        t = self.trainer
        self.calls.append((self.name, point, t.step, t.iter, t.status))
        if (point, t.step) == self.raise_at:
            raise RuntimeError("hook failed")
        if (point, t.step) == self.stop_at:
            t.stop()


for _point in POINTS:
    setattr(Recorder, _point, lambda self, _point=_point: self._hit(_point))


def test_hooks_are_called_in_order_at_each_point():
    calls = []
    trainer = toy_trainer([Recorder("a", calls), Recorder("b", calls)])
    trainer.train(0, 2)
    assert trainer.status == FINISHED and trainer.iter == 2 and trainer.diverged_at is None
    points = ["before_step", "after_forward", "after_backward", "after_step"]
    want = [(h, "before_train", 0, 0) for h in "ab"]
    for step in (1, 2):
        want += [(h, p, step, step if p == "after_step" else step - 1) for p in points for h in "ab"]
    want += [(h, "after_train", 2, 2) for h in "ab"]
    assert [c[:4] for c in calls] == want
    # loss w^2, lr 0.1: w 1 -> 0.8 -> 0.64; the values are step 2's (loss 0.8^2, 4 positives in 2
    # images, gradient 2w = 1.6)
    assert trainer.images == 4 and trainer.values == pytest.approx([0.64, 0.64, 0, 4, 2, 10, 1.6])
    assert trainer.last_loss == trainer.values[0] and trainer.train_seconds > 0


@pytest.mark.parametrize("point, steps_done", [("after_forward", 1), ("after_backward", 1), ("after_step", 2)])
def test_a_stop_ends_the_run_and_skips_the_hooks_after_it(point, steps_done):
    calls = []
    trainer = toy_trainer([Recorder("a", calls, stop_at=(point, 2)), Recorder("b", calls)])
    trainer.train(0, 5)
    assert (trainer.status, trainer.diverged_at, trainer.iter) == (DIVERGED, 2, steps_done)
    at_step_2 = [(h, p) for h, p, step, _, _ in calls if step == 2 and p != "after_train"]
    assert at_step_2[-1] == ("a", point)  # b is not called at the stopping point, nothing runs after it
    assert float(trainer.model.w.detach()) == pytest.approx(0.8 ** steps_done)  # a stopped step is not taken
    assert [c[:2] for c in calls[-2:]] == [("a", "after_train"), ("b", "after_train")]


def test_after_train_runs_when_the_loop_raises_with_status_running():
    calls = []
    trainer = toy_trainer([Recorder("a", calls, raise_at=("after_step", 2)), Recorder("b", calls)])
    with pytest.raises(RuntimeError, match="hook failed"):
        trainer.train(0, 5)
    assert [c[:2] for c in calls[-2:]] == [("a", "after_train"), ("b", "after_train")]
    assert calls[-1][4] == RUNNING and trainer.iter == 2


def test_resuming_at_the_last_step_takes_none():
    calls = []
    trainer = toy_trainer([Recorder("a", calls)])
    trainer.train(3, 3)
    assert trainer.status == FINISHED and trainer.iter == 3 and trainer.images == 0
    assert [c[1] for c in calls] == ["before_train", "after_train"]
