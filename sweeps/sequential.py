"""``--until-settled``: a sweep that adds seeds, in rounds, until each of its claims has a verdict.

Round 1 runs every setting at the first seeds (``--seeds``, default 0 1 2); after each round the
sweep's claims (``dashboards.findings``) are computed, and the next round adds ``--round-seeds``
seeds only to the settings of comparisons still inconclusive (in claims still open). It stops when
every claim is reproduced or contradicted ("settled"), when an open claim has no comparison that
more seeds could settle ("stuck"), after the round that reaches ``--max-seeds`` ("cap"), or when
the next round would end past ``--max-minutes`` of the sweep's start ("budget": 30 on the proxy
preset; a later run of the same command goes on).

The looks (seeds per setting after each round: 3, 5, ... up to the cap) are fixed before any
trial runs and recorded in ``<results>/<sweep>/sequential_design.json``; every interval is the
design's repeated confidence interval (``dashboards.stats.RepeatedT``), valid under this
data-dependent stopping, where plain t intervals recomputed after each round are not. A later
run of the same sweep continues only under the same looks (:func:`check_same_design`).
Trials are content-addressed, so a round runs only the seeds a setting does not have yet.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from detector.config import ConfigError

# --max-seeds by default: looks at 3 and 5 seeds. The first round (3 seeds of every setting) is
# the fixed-seed sweep itself; whether round 2 starts is the time budget's to say (--max-minutes,
# 30 on the proxy preset): measured alone on the 2-core machine, round 2 fits after OHEM's and
# anchor density's first round, and not after speed/accuracy's (25 min alone: round 2 would end at
# ~37) nor always after the main job's on a fresh clone (21-25 min with install, data, trunk).
DEFAULT_MAX_SEEDS = 5
DEFAULT_ROUND_SEEDS = 2
FIRST_ROUND = (0, 1, 2)  # seeds of round 1 without --seeds, whatever the preset (a t interval needs >= 2)
ALPHA = 0.05


@dataclass(frozen=True)
class Design:
    """Seeds per setting after each round: ``first`` (>= 2), then ``step`` more, up to ``max_seeds``."""

    first: int
    step: int = DEFAULT_ROUND_SEEDS
    max_seeds: int = DEFAULT_MAX_SEEDS
    alpha: float = ALPHA

    def __post_init__(self):
        if self.first < 2 or self.step < 1 or self.max_seeds < self.first:
            raise ConfigError(f"--until-settled: first round {self.first} seeds (>= 2), --round-seeds={self.step} "
                              f"(>= 1), --max-seeds={self.max_seeds} (>= the first round's {self.first})")

    @property
    def looks(self) -> tuple:
        """Seeds per setting at each look, e.g. (3, 5, 7); the last is ``max_seeds``."""
        return tuple(range(self.first, self.max_seeds, self.step)) + (self.max_seeds,)

    @property
    def analysis(self):
        from dashboards.stats import RepeatedT

        return RepeatedT(self.looks, self.alpha)


@dataclass
class Outcome:
    """Why the sweep stopped (settled | stuck | cap | budget | interrupted), after how many rounds, at
    how many seeds."""

    reason: str
    rounds: int
    seeds: int
    findings: list
    note: str = ""  # "budget": why the next round was not started


def settled(f) -> bool:
    return f.verdict in ("reproduced", "contradicted")


def open_settings(found: Iterable) -> list:
    """The settings (table keys) of the inconclusive comparisons of the claims still open (a
    comparison with a setting not measured at all has no estimate, and no seeds can settle it)."""
    keys = [k for f in found if not settled(f) for p in f.parts
            if p.estimate is not None and p.verdict == "inconclusive" for k in p.settings]
    return list(dict.fromkeys(keys))


def round_report(name: str, round_: int, seeds: int, found: list) -> str:
    """One line per round: which claims are settled (with their verdict) and which are open."""
    done = ", ".join(f"({f.id}) {f.verdict}" for f in found if settled(f)) or "none"
    left = ", ".join(f"({f.id})" for f in found if not settled(f)) or "none"
    return f"[{name}] round {round_} (up to {seeds} seeds): settled {done}; open {left}"


def until_settled(design: Design, keys: Sequence, run_round: Callable[[list, int], None],
                  claims: Callable[[], list], log: Callable[[str], None] = print, name: str = "sweep",
                  refuses: Callable[[list, int, int], Optional[str]] = lambda todo, n, have: None) -> Outcome:
    """The stopping rule. ``run_round(keys, n)`` measures the first ``n`` seeds of each setting in
    ``keys`` (returning False when it was interrupted before every trial ran: the rule stops there,
    no look is taken); ``claims()`` computes the sweep's findings from everything measured so far.
    ``refuses(keys, n, have)``, asked before each later round (settings at ``have`` seeds), says why
    it must not start (the time budget), or None. Stopping early for a reason that is not the data
    keeps the repeated intervals valid: each look's holds whenever the sweep stops."""
    todo = list(keys)
    for i, n in enumerate(design.looks, 1):
        if run_round(todo, n) is False:
            return Outcome("interrupted", i, n, claims())
        found = claims()
        log(round_report(name, i, n, found))
        todo = [k for k in open_settings(found) if k in set(keys)]
        if all(settled(f) for f in found):
            return Outcome("settled", i, n, found)
        if not todo:
            return Outcome("stuck", i, n, found)
        if i < len(design.looks):
            why = refuses(todo, design.looks[i], n)
            if why:
                return Outcome("budget", i, n, found, note=why)
            log(f"[{name}] round {i + 1} adds seeds to {len(todo)} setting(s): " + "; ".join(map(str, todo)))
    return Outcome("cap", len(design.looks), design.looks[-1], found)


def stop_message(name: str, out: Outcome, design: Design) -> str:
    if out.reason == "settled":
        return f"[{name}] stopped: every claim settled after round {out.rounds} (up to {out.seeds} seeds)"
    left = ", ".join(f"({f.id})" for f in out.findings if not settled(f))
    if out.reason == "interrupted":
        return (f"[{name}] interrupted in round {out.rounds} (up to {out.seeds} seeds) before its trials ran: "
                "no verdict taken from it; the same command again goes on (finished trials are reused, "
                "started ones resume from their checkpoints)")
    if out.reason == "stuck":
        return (f"[{name}] stopped after round {out.rounds}: {left} still inconclusive with no comparison "
                "more seeds could settle (a setting missing from the grid?)")
    if out.reason == "budget":
        return (f"[{name}] stopped after round {out.rounds} (up to {out.seeds} seeds): {out.note}; {left} still "
                "inconclusive. The same command with a larger --max-minutes goes on from here (finished trials "
                "are reused, the looks stay those of the design)")
    return f"[{name}] stopped at the cap (--max-seeds {design.max_seeds}): {left} still inconclusive"


@dataclass
class TimeBudget:
    """The wall-clock limit of one ``--until-settled`` invocation (``--max-minutes``; None: none).

    A later round starts only if it is projected to end within it: its new trials, a round of
    ``at_once`` at a time, each taking the median wall of the trials this sweep has recorded."""

    minutes: Optional[float]
    t0: float = dataclasses.field(default_factory=time.monotonic)

    def refuses(self, new_trials: int, trial_seconds: Optional[float], at_once: int) -> Optional[str]:
        if not self.minutes or not new_trials or not trial_seconds:
            return None
        elapsed = time.monotonic() - self.t0
        projected = math.ceil(new_trials / max(1, at_once)) * trial_seconds
        if elapsed + projected <= self.minutes * 60:
            return None
        return (f"the next round ({new_trials} trials, {at_once} at a time, ~{projected / 60:.0f} min at "
                f"{trial_seconds:.0f} s a trial) would end at ~{(elapsed + projected) / 60:.0f} min, past "
                f"--max-minutes {self.minutes:g}")


# ----------------------------------------------------------------------------- wiring into a sweep
PROXY_MINUTES = 30  # the proxy preset is sized for a sweep of 30 min on the 2-core machine


def max_minutes(args, preset: str) -> Optional[float]:
    """``--max-minutes``: given, 0 meaning none; by default 30 on the proxy preset, none elsewhere."""
    given = getattr(args, "max_minutes", None)
    if given is not None:
        return given or None
    return PROXY_MINUTES if preset == "proxy" else None


def at_once_on(ctx) -> int:
    """Trials at a time on the invocation's cluster (when no round ran a trial to say it)."""
    from sweeps.cli import max_concurrent, resolve_settings

    if getattr(ctx.args, "max_concurrent", None):
        return ctx.args.max_concurrent
    return max_concurrent(resolve_settings(ctx), ctx.cluster.capacity) if ctx.cluster is not None else 1


def seed_list(first: Sequence[int], total: int) -> list:
    """``first`` then the seeds after its largest, ``total`` in all.

    Later rounds never go back to seeds below ``first``: a study started at seeds 3 4 5 is one
    on new seeds, and seeds 0 1 would replay an earlier study's trials (a seed fixes a trial's
    AP), so its data would not be new."""
    nxt = max(first) + 1
    return (list(first) + list(range(nxt, nxt + total)))[:total]


def point_keys(spec, args) -> list:
    """Each grid point's table key (the columns ``dashboards.findings.KEYS`` groups by)."""
    from dashboards.effects import key_value
    from dashboards.findings import KEYS
    from sweeps.cli import SweepContext, base_config, resolve_settings
    from sweeps.tables import config_columns

    ctx = SweepContext.of(args)  # one for both: the cluster is described once
    base = base_config(ctx, spec, resolve_settings(ctx).preset)
    columns = [config_columns(base.replace(**p)) for p in spec.points]
    return [tuple(key_value(c[k]) for k in KEYS[spec.name]) for c in columns]


def check_same_design(results_dir, name: str, design: Design) -> None:
    """Refuse to continue sweep ``name`` under other looks than the design it was run with
    (``<results>/<name>/sequential_design.json``): a cap raised after a look's verdicts were seen
    spends more than the design's 5% (a one-look design at --max-seeds 3 spent all of it at 3 seeds)."""
    from dashboards import findings

    saved = findings.load_analysis(results_dir, name)  # FIXED when no design was recorded
    if saved is not findings.FIXED and saved != design.analysis:
        raise ConfigError(
            f"--max-seeds/--round-seeds/--seeds: sweep {name!r} was run --until-settled with looks at "
            f"{', '.join(map(str, saved.looks))} seeds ({findings.design_path(results_dir, name)}); this "
            f"command's design looks at {', '.join(map(str, design.looks))}. Choosing the looks after seeing "
            "the verdicts would not keep their 95%: continue with the flags it was run with, or start a new design on new seeds "
            "(--name NEW --seeds ...) or over (--fresh)")


def run_until_settled(spec, args, run=None) -> dict:
    """Run ``spec`` in rounds (see the module docstring); returns the last round's result with
    ``stopped`` (settled | stuck | cap | budget | interrupted) and ``failed`` summed over the rounds."""
    from dashboards import findings, results_io
    from sweeps.cli import SweepContext, resolve_settings
    from sweeps import tables
    from sweeps.copies import finished_elsewhere, may_copy
    from sweeps.runner import SETTLED, plan, run_sweep

    run = run or run_sweep
    # every round runs in this invocation's context; its answer covers the whole study, settled points too
    ctx = dataclasses.replace(SweepContext.of(args), study=spec)
    args = ctx.args
    if spec.name not in findings.CLAIMS:
        raise ConfigError(f"--until-settled: sweep {spec.name!r} makes no claims "
                          f"(those that do: {', '.join(findings.CLAIMS)})")
    if args.search != "grid":
        raise ConfigError("--until-settled needs --search grid (the claims compare the grid's settings)")
    first = resolve_settings(ctx).seeds if args.seeds else list(FIRST_ROUND)
    design = Design(len(first), args.round_seeds, args.max_seeds or DEFAULT_MAX_SEEDS)
    seeds = seed_list(first, design.max_seeds)
    name = args.name or spec.name
    keys = point_keys(spec, ctx)
    if not args.fresh:
        check_same_design(args.results_dir, name, design)
    findings.save_design(args.results_dir, name, design.analysis, seeds=seeds)
    print(f"[{name}] --until-settled: looks at {', '.join(map(str, design.looks))} seeds per setting "
          f"(seeds {' '.join(map(str, seeds))}); intervals: {design.analysis.label}", flush=True)
    state = {"failed": 0, "out": None, "fresh": args.fresh}

    def run_round(todo: list, n: int) -> bool:
        sub = dataclasses.replace(spec, points=[p for p, k in zip(spec.points, keys) if k in todo])
        a = (ctx.next_round if state["out"] else ctx.with_flags)(seeds=seeds[:n], fresh=state["fresh"])
        state["fresh"] = False
        state["out"] = run(sub, a)
        state["failed"] += state["out"]["failed"]
        return not state["out"].get("interrupted")

    def claims() -> list:
        return findings.CLAIMS[spec.name](results_io.read_parquet_trials(args.results_dir, name), design.analysis)

    budget = TimeBudget(max_minutes(args, resolve_settings(ctx).preset), t0=ctx.started)  # data, trunk included

    def to_train(todo: list, n: int) -> int:
        """The next round's trials that no sweep in the results folder has recorded (a trial
        another sweep finished is copied, not trained: sweeps.copies)."""
        sub = dataclasses.replace(spec, points=[p for p, k in zip(spec.points, keys) if k in todo])
        _, _, trials = plan(sub, ctx.with_flags(seeds=seeds[:n], fresh=False))
        record = tables.read_trials(args.results_dir, name)
        missing = {t.trial_id for t in trials if record.get(t.trial_id, {}).get("status") not in SETTLED}
        return len(missing) - (len(finished_elsewhere(args.results_dir, name, missing)) if may_copy(spec, False) else 0)

    def refuses(todo: list, n: int, have: int) -> Optional[str]:
        rows = results_io.read_parquet_trials(args.results_dir, name)
        walls = rows["wall_seconds"].dropna() if "wall_seconds" in rows else []
        summary = (state["out"] or {}).get("summary") or {}
        state["at_once"] = summary.get("concurrent") or state.get("at_once") or at_once_on(ctx)
        return budget.refuses(to_train(todo, n), float(walls.median()) if len(walls) else None,
                              state["at_once"])

    out = until_settled(design, keys, run_round, claims, name=name, refuses=refuses)
    print(stop_message(name, out, design), flush=True)
    return {**state["out"], "failed": state["failed"], "stopped": out.reason, "rounds": out.rounds}
