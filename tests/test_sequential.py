"""sweeps/sequential.py: the --until-settled stopping rule. Under no true difference, simulated
with seeded normal trials, the rule with the design's repeated t intervals says "reproduced" or
"contradicted" in at most 5% of repetitions, and with plain t intervals recomputed after every
round in more; seeds go only to the settings of open comparisons; it stops when all claims are
settled, or at the cap; and a sweep wired to it (a fake runner writing parquet) does the same."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import pytest

from dashboards import findings
from dashboards.findings import Finding, Part
from dashboards.stats import FixedN
from detector.config import ConfigError
from sweeps import gamma_alpha, sequential
from sweeps.sequential import Design, until_settled
from tests.dashboard_fixtures import metrics_at, trial_row, write_trials


def test_looks_are_fixed_by_the_first_round_the_round_size_and_the_cap():
    assert Design(3, 2, 7).looks == (3, 5, 7)
    assert Design(3, 2, 6).looks == (3, 5, 6)  # the cap is always a look
    assert Design(3, 2, 3).looks == (3,)
    for bad in ((1, 2, 5), (3, 0, 5), (3, 2, 2)):
        with pytest.raises(ConfigError):
            Design(*bad)
    assert sequential.seed_list([0, 1, 2], 5) == [0, 1, 2, 3, 4]
    assert sequential.seed_list([4, 0, 7], 5) == [4, 0, 7, 8, 9]  # never back below the first round
    assert sequential.seed_list([3, 4, 5], 5) == [3, 4, 5, 6, 7]


class Simulated:
    """Settings whose per-seed values are drawn up front (a shared seed effect plus noise); a
    round 'runs' seeds by revealing them; ``log`` records which settings each round ran."""

    def __init__(self, values: dict):
        self.values, self.have, self.log = values, {k: 0 for k in values}, []

    def run_round(self, keys, n):
        self.log.append((sorted(keys), n))
        for k in keys:
            self.have[k] = max(self.have[k], n)

    def measured(self, key) -> dict:
        return {s: float(v) for s, v in enumerate(self.values[key][:self.have[key]])}


def _one_claim(sim: Simulated, analysis, a="A", b="B") -> list:
    est = analysis.difference(sim.measured(a), sim.measured(b))
    return [Finding("x", "A beats B", "simulated", [Part("A - B", est, "greater", settings=(a, b))])]


def _false_verdicts(analysis, design: Design, reps: int, seed: int) -> float:
    """Share of repetitions, with A and B equal in distribution, that end reproduced or contradicted."""
    rng = np.random.default_rng(seed)
    wrong = 0
    for _ in range(reps):
        shared = rng.normal(0, 5, design.max_seeds)  # the seed effect both settings share
        sim = Simulated({k: shared + rng.normal(0, 1, design.max_seeds) for k in "AB"})
        out = until_settled(design, ["A", "B"], sim.run_round, lambda: _one_claim(sim, analysis), log=lambda m: None)
        wrong += out.reason == "settled"
    return wrong / reps


DESIGN = Design(3, 2, 11)  # looks at 3, 5, 7, 9, 11 seeds


def test_optional_stopping_keeps_false_verdicts_at_or_below_5_percent():
    assert _false_verdicts(DESIGN.analysis, DESIGN, reps=800, seed=0) <= 0.05


def test_plain_t_intervals_recomputed_each_round_exceed_5_percent():
    # measured 15.9% (the repeated t: 3.1%); above 10%, so not one look's 5% plus chance (SE 0.8%)
    assert _false_verdicts(FixedN(), DESIGN, reps=800, seed=0) > 0.10


def test_seeds_go_only_to_open_comparisons_and_it_stops_at_the_cap():
    n = 7
    sim = Simulated({"A": np.full(n, 30.0) + np.arange(n) * 0.1, "B": np.full(n, 10.0),  # A >> B: settled
                     "C": np.full(n, 20.0), "D": np.full(n, 20.0)})  # C == D: never settled

    def claims():
        return _one_claim(sim, DESIGN.analysis) + [
            Finding("y", "C beats D", "simulated",
                    [Part("C - D", DESIGN.analysis.difference(sim.measured("C"), sim.measured("D")), "greater",
                          settings=("C", "D"))])]

    lines = []
    out = until_settled(Design(3, 2, n), list("ABCD"), sim.run_round, claims, log=lines.append)
    assert sim.log == [(list("ABCD"), 3), (["C", "D"], 5), (["C", "D"], 7)]
    assert out.reason == "cap" and out.rounds == 3 and out.seeds == n
    assert "settled (x) reproduced; open (y)" in lines[0]
    assert "stopped at the cap (--max-seeds 7): (y) still inconclusive" in sequential.stop_message("s", out,
                                                                                                   Design(3, 2, n))


def test_it_stops_as_soon_as_every_claim_is_settled():
    rng = np.random.default_rng(1)
    sim = Simulated({"A": 30 + rng.normal(0, 1, 9), "B": 10 + rng.normal(0, 1, 9)})
    out = until_settled(Design(3, 2, 9), ["A", "B"], sim.run_round, lambda: _one_claim(sim, DESIGN.analysis),
                        log=lambda m: None)
    assert out.reason == "settled" and sim.log == [(["A", "B"], 3)]


def test_a_claim_no_seed_can_settle_stops_the_sweep():
    sim = Simulated({"A": np.full(9, 1.0), "B": np.full(9, 1.0)})
    missing = Finding("z", "needs a setting not in the grid", "simulated",
                      [Part("E - A", None, "greater", settings=("E", "A"))])
    out = until_settled(Design(3, 2, 9), ["A", "B"], sim.run_round, lambda: [missing], log=lambda m: None)
    assert out.reason == "stuck" and sim.log == [(["A", "B"], 3)]


def test_an_interrupted_round_stops_the_rule_without_a_look():
    sim = Simulated({"A": np.full(9, 1.0), "B": np.full(9, 1.0)})  # never settles: it would run to the cap
    calls = []

    def interrupted_in_round_2(keys, n):
        sim.run_round(keys, n)
        calls.append(n)
        return n < 5  # round 2 (5 seeds) is cut short

    lines = []
    out = until_settled(Design(3, 2, 9), ["A", "B"], interrupted_in_round_2, lambda: _one_claim(sim, DESIGN.analysis),
                        log=lines.append)
    assert out.reason == "interrupted" and out.rounds == 2 and calls == [3, 5]
    assert len(lines) == 2 and "round 2 adds seeds" in lines[1]  # round 1's look only: none of round 2
    message = sequential.stop_message("s", out, Design(3, 2, 9))
    assert "interrupted in round 2" in message and "the same command again" in message
    assert "cap" not in message


def test_an_interrupted_trial_is_not_a_failed_one():
    from sweeps.runner import outcome_counts

    # statuses of an invocation's trials after Ctrl-C: 2 ran, 1 failed, 1 started (row "running"), 2 never started
    got = outcome_counts(["finished", "diverged", "failed", "running", None, None])
    assert got == {"finished": 1, "diverged": 1, "stopped": 0, "failed": 1, "interrupted": 3}
    assert outcome_counts(["stopped", "finished"])["interrupted"] == 0


def test_a_sweep_until_settled_runs_rounds_and_records_its_design(tmp_path, capsys):
    """gamma_alpha on a 2 x 2 grid with a fake runner: FL clearly beats CE (claim i settles in round
    1); CE alpha .25 is noisy against .75 (claim ii stays open), so only they get seeds 3 and 4; claim
    iii's settings are not in the grid, so it stays open to the cap."""
    args = gamma_alpha.parser().parse_args([
        "--preset", "smoke", "--until-settled", "--max-seeds", "5", "--gammas", "0", "2", "--alphas", "0.25", "0.75",
        "--data-root", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results")])
    spec = gamma_alpha.declare(args)
    ap = {(0.0, 0.25): [0.10, 0.22, 0.16, 0.12, 0.20], (0.0, 0.75): [0.20, 0.21, 0.20, 0.20, 0.20],
          (2.0, 0.25): [0.40, 0.41, 0.42, 0.40, 0.40], (2.0, 0.75): [0.30, 0.31, 0.30, 0.32, 0.30]}
    calls = []

    def fake_run(sub, ctx):
        a = ctx.args
        calls.append(([(p["gamma"], p["alpha"]) for p in sub.points], list(a.seeds)))
        write_trials(a.results_dir, "gamma_alpha", [
            trial_row("gamma_alpha", f"g{p['gamma']}_a{p['alpha']}_s{s}", gamma=p["gamma"], alpha=p["alpha"], seed=s,
                      metrics=metrics_at(ap[(p["gamma"], p["alpha"])][s])) for p in sub.points for s in a.seeds])
        return {"failed": 0, "trials": []}

    out = sequential.run_until_settled(spec, args, run=fake_run)
    assert calls == [([(0.0, 0.25), (0.0, 0.75), (2.0, 0.25), (2.0, 0.75)], [0, 1, 2]),
                     ([(0.0, 0.25), (0.0, 0.75)], [0, 1, 2, 3, 4])]
    assert out["stopped"] == "cap" and out["rounds"] == 2
    printed = capsys.readouterr().out
    assert "looks at 3, 5 seeds per setting" in printed
    assert "round 1 (up to 3 seeds): settled (i) reproduced; open (ii), (iii)" in printed
    assert "stopped at the cap (--max-seeds 5): (ii), (iii) still inconclusive" in printed
    design = json.loads((tmp_path / "results" / "gamma_alpha" / findings.DESIGN_FILE).read_text())
    assert design["looks"] == [3, 5] and design["alpha"] == 0.05
    analysis = findings.load_analysis(tmp_path / "results", "gamma_alpha")
    assert analysis.looks == (3, 5)  # the findings dashboard reads the design back


def _budget_run(tmp_path, minutes: str, elsewhere=()):
    """The 2 x 2 grid with a fake runner that records each round's trials under their real ids (70 s
    of wall each), ``elsewhere``'s seeds of CE alpha .25 / .75 finished by another sweep
    beforehand; returns (result, the seeds each round ran, round clocks, study sizes)."""
    from sweeps.runner import plan

    args = gamma_alpha.parser().parse_args([
        "--preset", "smoke", "--until-settled", "--max-minutes", minutes, "--gammas", "0", "2",
        "--alphas", "0.25", "0.75", "--data-root", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results")])
    ap = {(0.0, 0.25): [0.10, 0.22, 0.16, 0.12, 0.20], (0.0, 0.75): [0.20, 0.21, 0.20, 0.20, 0.20],
          (2.0, 0.25): [0.40, 0.41, 0.42, 0.40, 0.40], (2.0, 0.75): [0.30, 0.31, 0.30, 0.32, 0.30]}
    calls, clocks, studies = [], [], []

    def rows(sweep, sub, ctx):
        out = []
        for t in plan(sub, ctx)[2]:
            g, a = t.cfg.gamma, t.cfg.alpha
            row = trial_row(sweep, f"g{g}_a{a}_s{t.seed}", gamma=g, alpha=a, seed=t.seed,
                            metrics=metrics_at(ap[(g, a)][t.seed]))
            out.append({**row, "trial_id": t.trial_id})
        return out

    def fake_run(sub, ctx):
        calls.append(list(ctx.args.seeds))
        clocks.append(ctx.round_started)
        studies.append(len(ctx.study.points))  # every round's answer covers the whole study
        write_trials(ctx.args.results_dir, "gamma_alpha", rows("gamma_alpha", sub, ctx))
        return {"failed": 0, "trials": [], "summary": {"concurrent": 2}}

    spec = gamma_alpha.declare(args)
    if elsewhere:  # another sweep in the same results folder finished these trials
        from sweeps.cli import SweepContext

        ce = dataclasses.replace(spec, points=[p for p in spec.points if p["gamma"] == 0.0])
        write_trials(args.results_dir, "other", rows("other", ce, SweepContext(args).with_flags(seeds=list(elsewhere))))
    out = sequential.run_until_settled(spec, args, run=fake_run)
    return out, calls, clocks, studies


@pytest.mark.parametrize("minutes, rounds", [("1", 1), ("10", 2)])
def test_a_later_round_starts_only_if_it_ends_within_the_time_budget(tmp_path, capsys, minutes, rounds):
    """Round 2 would run 4 trials (seeds 3, 4 of CE alpha .25 and .75), 2 at a time, at the recorded
    70 s each (2.3 min): past --max-minutes 1, within 10."""
    before = time.monotonic()
    out, calls, clocks, studies = _budget_run(tmp_path, minutes)
    assert len(calls) == rounds
    printed = capsys.readouterr().out
    if rounds == 1:
        assert out["stopped"] == "budget" and "round 2 adds seeds" not in printed
        assert ("stopped after round 1 (up to 3 seeds): the next round (4 trials, 2 at a time, ~2 min at 70 s a "
                "trial) would end at ~2 min, past --max-minutes 1; (ii), (iii) still inconclusive") in printed
        assert "with a larger --max-minutes goes on from here" in printed
    else:
        assert out["stopped"] == "cap" and calls[1] == [0, 1, 2, 3, 4] and studies == [4, 4]
        # round 1's wall counts from the invocation's start (data, trunk); round 2's from its own
        assert clocks[0] is None and clocks[1] is not None and clocks[1] >= before


def test_the_time_budget_counts_trials_another_sweep_finished_as_free(tmp_path, capsys):
    """Round 2's seeds 3 and 4 of the two CE settings finished under another sweep name: they are
    copied, not trained, so the round trains nothing and fits --max-minutes 1 (4 trials would not);
    with only seed 3 finished elsewhere, 2 trials remain: 70 s, past the minute."""
    out, calls, _, _ = _budget_run(tmp_path / "both", "1", elsewhere=(3, 4))
    assert calls[1:] == [[0, 1, 2, 3, 4]] and out["stopped"] == "cap"
    out, calls, _, _ = _budget_run(tmp_path / "one", "1.1", elsewhere=(3,))
    assert len(calls) == 1 and out["stopped"] == "budget"
    assert "the next round (2 trials, 2 at a time, ~1 min at 70 s a trial)" in capsys.readouterr().out


def test_the_time_budget_projects_rounds_of_trials_at_a_time():
    import time

    budget = sequential.TimeBudget(30, t0=time.monotonic() - 24.5 * 60)  # 24.5 min spent
    assert budget.refuses(4, 150.0, 2) is None  # 2 rounds of 2 x 150 s: ends at 29.5 min
    assert "5 trials, 2 at a time, ~8 min" in budget.refuses(5, 150.0, 2)  # 3 rounds: 32 min
    assert budget.refuses(5, 150.0, 5) is None
    assert sequential.TimeBudget(None).refuses(100, 1e4, 1) is None
    assert budget.refuses(4, None, 2) is None  # nothing recorded to project from
    assert sequential.max_minutes(argparse.Namespace(max_minutes=None), "proxy") == 30
    assert sequential.max_minutes(argparse.Namespace(max_minutes=None), "paper") is None
    assert sequential.max_minutes(argparse.Namespace(max_minutes=0.0), "proxy") is None


def test_a_sweep_continues_only_under_the_design_it_was_run_with(tmp_path):
    # the anchor sweep ran --until-settled --max-seeds 3 (one look: all of the 5% spent at n=3);
    # raising the cap after seeing that look would inflate the verdicts' error
    def argv(*extra):
        return ["--preset", "smoke", "--until-settled", "--gammas", "0", "2", "--alphas", "0.25",
                "--data-root", str(tmp_path / "data"), "--results-dir", str(tmp_path / "results"), *extra]

    rounds = []

    def fake_run(sub, ctx):
        rounds.append(list(ctx.args.seeds))
        write_trials(ctx.args.results_dir, "gamma_alpha", [
            trial_row("gamma_alpha", f"g{p['gamma']}_s{s}", gamma=p["gamma"], alpha=p["alpha"], seed=s,
                      metrics=metrics_at(0.3 + 0.01 * s)) for p in sub.points for s in ctx.args.seeds])
        return {"failed": 0, "trials": []}

    first = gamma_alpha.parser().parse_args(argv("--max-seeds", "3"))
    sequential.run_until_settled(gamma_alpha.declare(first), first, run=fake_run)
    raised = gamma_alpha.parser().parse_args(argv("--max-seeds", "5"))
    with pytest.raises(ConfigError, match="was run --until-settled with looks at 3 seeds"):
        sequential.run_until_settled(gamma_alpha.declare(raised), raised, run=fake_run)
    assert rounds == [[0, 1, 2]]  # refused before any round
    same = gamma_alpha.parser().parse_args(argv("--max-seeds", "3"))
    sequential.run_until_settled(gamma_alpha.declare(same), same, run=fake_run)  # the same design continues
    assert rounds == [[0, 1, 2], [0, 1, 2]]


def test_only_a_sweep_that_makes_claims_runs_until_settled():
    from sweeps import libra

    args = libra.parser().parse_args(["--preset", "smoke", "--until-settled"])
    with pytest.raises(ConfigError, match="makes no claims"):
        sequential.run_until_settled(libra.declare(args), args, run=lambda *a: pytest.fail("ran a round"))


def test_the_time_budget_counts_from_the_invocations_start(monkeypatch):
    # the proxy's data and trunk (~6 min on a fresh machine) are made before the first round: the
    # budget that decides whether a later round starts must count them (it started after them)
    from sweeps import cli

    import time

    before = time.monotonic()
    ctx = cli.SweepContext(argparse.Namespace(seeds=[0, 1, 2]))
    assert before <= ctx.started <= time.monotonic()
    assert ctx.with_flags(seeds=[3]).started == ctx.started  # a round keeps the invocation's start
    # the first round's wall and start-up lines count from the invocation's start, a later round's from its own
    old = cli.SweepContext(argparse.Namespace(seeds=[0]), started=time.monotonic() - 100.0)
    assert 99.0 < time.perf_counter() - old.round_t0() < 101.0
    later = old.next_round(seeds=[3])
    assert later.started == old.started and 0.0 <= time.perf_counter() - later.round_t0() < 1.0
    assert later.with_flags(seeds=[4]).round_started == later.round_started
    seen = {}

    class Budget(sequential.TimeBudget):
        def __init__(self, minutes, t0):
            seen["t0"] = t0
            raise StopIteration  # the budget is all this test reads

    monkeypatch.setattr(sequential, "TimeBudget", Budget)
    monkeypatch.setattr(sequential, "point_keys", lambda spec, ctx: [])
    monkeypatch.setattr(cli, "resolve_settings", lambda ctx: argparse.Namespace(seeds=[0, 1, 2], preset="proxy"))
    monkeypatch.setattr(sequential, "check_same_design", lambda *a: None)
    from dashboards import findings
    monkeypatch.setattr(findings, "save_design", lambda *a, **k: None)
    args = argparse.Namespace(search="grid", seeds=None, round_seeds=2, max_seeds=None, name=None, fresh=False,
                              results_dir="r", max_minutes=None)
    ctx = cli.SweepContext(args, started=400.0)
    with pytest.raises(StopIteration):
        sequential.run_until_settled(argparse.Namespace(name="gamma_alpha", points=[]), ctx)
    assert seen["t0"] == 400.0


def test_a_later_rounds_answer_covers_the_settled_points(tmp_path, sweep_data_root):
    """Round 2 runs only the open point (g2) at seeds 0-4; its answer (printed, written, on the
    parent run) still holds the settled g0 at its seeds 0-2, and nothing outside the study."""
    import dataclasses
    import types

    from sweeps import runner
    from sweeps.cli import SweepContext

    def ctx_at(seeds, *flags):
        return SweepContext(gamma_alpha.parser().parse_args([
            "--preset", "smoke", "--gammas", *flags, "--alphas", ".25", "--data-root", str(sweep_data_root),
            "--results-dir", str(tmp_path), "--seeds", *map(str, seeds)]))

    first = ctx_at([0, 1, 2], "0", "2")
    study = gamma_alpha.declare(first)
    later = ctx_at([0, 1, 2, 3, 4], "0", "2")
    round2 = dataclasses.replace(study, points=[p for p in study.points if p["gamma"] == 2])
    ran = runner.plan(study, first)[2] + runner.plan(round2, later)[2] + runner.plan(
        gamma_alpha.declare(ctx_at([0], "5")), ctx_at([0], "5"))[2]  # g5: another invocation's, not the study's
    final = {t.trial_id: {"trial_id": t.trial_id, "setting": t.setting, "seed": t.cfg.seed} for t in ran}
    assert len(final) == 3 + 5 + 1  # g2 seeds 0-2 ran in both rounds: one trial each
    rows = runner.study_rows(types.SimpleNamespace(ctx=dataclasses.replace(later, study=study)), final)
    assert sorted((r["setting"], r["seed"]) for r in rows) == [
        ("g0 a.25", 0), ("g0 a.25", 1), ("g0 a.25", 2), *(("g2 a.25", s) for s in range(5))]
