"""dashboards/findings.py: each claim's verdict on constructed trials (a clear win, a clear loss,
an overlap), its statistic worked by hand, and the command's Markdown + JSON."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from scipy import stats

from dashboards import findings, results_io
from tests.dashboard_fixtures import metrics_at, run_main, trial_row, write_trials


def _frame(sweep: str, settings: dict, key: tuple) -> pd.DataFrame:
    """Trials of ``sweep``: {setting (values of ``key``): [AP per seed, or None for diverged]}."""
    rows = []
    for setting, aps in settings.items():
        point = dict(zip(key, setting))
        for seed, ap in enumerate(aps):
            name = "_".join(map(str, setting)) + f"_s{seed}"
            rows.append(trial_row(sweep, name, metrics=None if ap is None else metrics_at(ap),
                                  status="diverged" if ap is None else "finished", seed=seed, **point))
    return results_io._normalise(pd.DataFrame(rows), sweep, "test")


def _by_id(found: list) -> dict:
    return {f.id: f for f in found}


GA = ("gamma", "alpha")


def test_gamma_alpha_claims_reproduced():
    t = _frame("gamma_alpha", {(0.0, 0.1): [None, None, None],  # CE collapses at alpha .1 (AP 0)
                               (0.0, 0.25): [0.10, 0.12, 0.11],
                               (0.0, 0.75): [0.30, 0.31, 0.29],  # the best CE
                               (0.5, 0.5): [0.33, 0.335, 0.325],
                               (2.0, 0.25): [0.34, 0.345, 0.33],
                               (5.0, 0.25): [0.30, 0.31, 0.295]}, GA)
    f = _by_id(findings.claims_gamma_alpha(t))
    # (i) FL - best CE (alpha .75): differences 4, 3.5, 4 points: mean 3.833, sd 0.2887, se 0.1667
    part = f["i"].parts[0]
    half = stats.t.ppf(0.975, 2) * 0.288675 / 3 ** 0.5
    assert part.estimate.mean == pytest.approx(23 / 6, abs=1e-9)
    assert (part.estimate.low, part.estimate.high) == (pytest.approx(23 / 6 - half, abs=1e-4),
                                                       pytest.approx(23 / 6 + half, abs=1e-4))
    assert f["i"].verdict == "reproduced"
    # (ii) alpha .1 (0) and .25 (11) far below the best (30): more than a quarter of 30 AP
    assert [p.verdict for p in f["ii"].parts] == ["reproduced", "reproduced"] and f["ii"].verdict == "reproduced"
    assert f["ii"].parts[0].margin == pytest.approx(0.25 * 30.0)
    # (iii) gamma .5 within 10% of gamma 2 (about 3.4 points); gamma 5 lower
    assert f["iii"].verdict == "reproduced" and len(f["iii"].parts) == 2  # gamma 1 not measured: no part


def test_a_clear_loss_is_contradicted_and_an_overlap_inconclusive():
    lost = _frame("gamma_alpha", {(0.0, 0.75): [0.40, 0.41, 0.39], (2.0, 0.25): [0.30, 0.31, 0.29]}, GA)
    assert _by_id(findings.claims_gamma_alpha(lost))["i"].verdict == "contradicted"
    # the best CE is whichever alpha is best (here .25), not the paper's .75
    best_low = _frame("gamma_alpha", {(0.0, 0.25): [0.40, 0.41, 0.40], (0.0, 0.75): [0.30, 0.30, 0.31],
                                      (2.0, 0.25): [0.34, 0.35, 0.345]}, GA)
    f = _by_id(findings.claims_gamma_alpha(best_low))["i"]
    assert f.verdict == "contradicted" and "α=0.25" in f.parts[0].text
    overlap = _frame("gamma_alpha", {(0.0, 0.75): [0.30, 0.36, 0.29], (2.0, 0.25): [0.33, 0.30, 0.31]}, GA)
    f = _by_id(findings.claims_gamma_alpha(overlap))["i"]
    assert f.verdict == "inconclusive" and f.parts[0].estimate.low < 0 < f.parts[0].estimate.high
    one_seed = _frame("gamma_alpha", {(0.0, 0.75): [0.10], (2.0, 0.25): [0.50]}, GA)
    assert _by_id(findings.claims_gamma_alpha(one_seed))["i"].verdict == "inconclusive"  # n = 1: no interval


def test_fl_vs_ohem():
    def frame(fl, ohem):
        rows = [trial_row("ohem", f"fl{s}", metrics=metrics_at(a), classification_loss="focal", seed=s)
                for s, a in enumerate(fl)]
        rows += [trial_row("ohem", f"o{s}", metrics=metrics_at(a), classification_loss="ohem", seed=s)
                 for s, a in enumerate(ohem)]
        return results_io._normalise(pd.DataFrame(rows), "ohem", "test")

    lost = findings.claims_ohem(frame([0.30, 0.31, 0.29], [0.35, 0.37, 0.34]))[0]
    assert lost.verdict == "contradicted" and lost.parts[0].estimate.mean == pytest.approx(-16 / 3, abs=1e-6)
    won = findings.claims_ohem(frame([0.40, 0.42, 0.41], [0.35, 0.36, 0.35]))[0]
    assert won.verdict == "reproduced"
    overlap = findings.claims_ohem(frame([0.30, 0.36, 0.29], [0.33, 0.30, 0.31]))[0]
    assert overlap.verdict == "inconclusive"
    unpaired = findings.claims_ohem(frame([0.40, 0.42], [0.30]))[0]
    assert unpaired.parts[0].estimate.n == 1 and unpaired.verdict == "inconclusive"  # only seed 0 has both


def test_a_setting_that_did_not_learn_is_named():
    # CE alpha .25 finished two seeds below 1 AP point (the third diverged): it did not learn;
    # alpha .1 diverged at every seed (a divergence, not a budget too short to learn)
    t = _frame("gamma_alpha", {(0.0, 0.1): [None, None, None], (0.0, 0.25): [0.002, 0.0, None],
                               (0.0, 0.75): [0.30, 0.31, 0.29], (2.0, 0.25): [0.34, 0.345, 0.33],
                               (5.0, 0.25): [0.009, 0.02, 0.005]}, GA)  # 2 AP at one seed: it learned
    f = _by_id(findings.claims_gamma_alpha(t))
    assert "did not learn" in f["ii"].note and "gamma=0, alpha=0.25" in f["ii"].note
    learned_note, _, diverged_note = f["ii"].note.partition("diverged at every seed")
    assert "alpha=0.1" not in learned_note and "gamma=0, alpha=0.1" in diverged_note  # named as diverged
    assert "did not learn" not in f["i"].note and "did not learn" not in f["iii"].note
    assert f["ii"].verdict == "reproduced"  # the note explains the verdict; it does not change it

    rows = [trial_row("ohem", f"fl{s}", metrics=metrics_at(a), classification_loss="focal", seed=s)
            for s, a in enumerate([0.17, 0.13, 0.02])]
    rows += [trial_row("ohem", f"o{s}", metrics=metrics_at(a), classification_loss="ohem", ohem_batch_size=128,
                       seed=s) for s, a in enumerate([0.0, 0.0001, 0.0])]
    won = findings.claims_ohem(results_io._normalise(pd.DataFrame(rows), "ohem", "test"))[0]
    assert "did not learn" in won.note and "classification_loss=ohem" in won.note
    not_learned, _, mixed = won.note.partition("rests on a mix")
    assert "classification_loss=focal" not in not_learned  # it learned: 17 and 13 AP
    assert "classification_loss=focal," in mixed and "(1 of 3 seeds" in mixed  # its 2 AP seed stalled (< 13 / 2)
    md = "\n".join(findings.table_lines([won]))
    assert "did not learn at this budget" in md


def test_a_verdict_against_a_setting_that_diverged_at_every_seed_says_so():
    t = _frame("gamma_alpha", {(0.0, 0.75): [0.62, 0.62, 0.63], (0.5, 0.5): [0.63, 0.63, 0.63],
                               (2.0, 0.25): [0.56, 0.53, 0.56], (5.0, 0.25): [None, None, None]}, GA)
    f = _by_id(findings.claims_gamma_alpha(t))
    assert [p.verdict for p in f["iii"].parts][-1] == "reproduced"  # gamma 5 "lower": AP 0 x 3
    assert "diverged at every seed" in f["iii"].note and "gamma=5, alpha=0.25" in f["iii"].note
    assert "diverged at every seed" not in f["i"].note  # FL and CE both trained


def test_anchor_density_and_speed_claims():
    t = _frame("anchor_density", {(1, (1.0,)): [0.28, 0.29, 0.27], (2, (0.5, 1.0, 2.0)): [0.33, 0.335, 0.32],
                                  (3, (0.5, 1.0, 2.0)): [0.34, 0.33, 0.345]}, ("scales_per_octave", "aspect_ratios"))
    assert findings.claims_anchor_density(t)[0].verdict == "reproduced"
    rows = []
    for depth, base in ((18, 0.30), (34, 0.34)):
        for i, scale in enumerate((192, 256)):
            for seed in range(3):
                rows.append(trial_row("speed_accuracy", f"{depth}_{scale}_{seed}", metrics=metrics_at(base + 0.03 * i
                                                                                                  + 0.002 * seed),
                                      ms_per_image=20.0 * (1 + depth / 18) * (1 + i) + seed, seed=seed, depth=depth,
                                      min_size=scale, max_size=scale))
    f = findings.claims_speed_accuracy(results_io._normalise(pd.DataFrame(rows), "speed_accuracy", "test"))[0]
    assert len(f.parts) == 8  # 2 depths x 1 scale step + 2 scales x 1 depth step, each AP and ms
    ms = [p for p in f.parts if p.unit == "ms"]
    assert ms[0].estimate.mean == pytest.approx(40.0)  # 40 -> 80 ms per image
    assert f.verdict == "reproduced"


def test_command_writes_markdown_and_json(tmp_path, capsys):
    write_trials(tmp_path, "gamma_alpha", [
        trial_row("gamma_alpha", f"g{g}_s{s}", metrics=metrics_at(ap), gamma=g, alpha=a, seed=s)
        for g, a, aps in ((0.0, 0.75, (0.30, 0.31, 0.29)), (2.0, 0.25, (0.34, 0.345, 0.33)))
        for s, ap in enumerate(aps)])
    proc = run_main(findings.main, ["--results", str(tmp_path)], capsys)
    assert proc.returncode == 0, proc.stderr
    md_path, js_path = proc.stdout.split()
    md, js = open(md_path).read(), json.load(open(js_path))
    assert "**(i)** FL (γ = 2, α = .25) beats the best α-balanced CE (Table 1a vs 1b) — **reproduced**" in md
    assert "run `python sweeps/anchor_density.py`" in md  # a claim whose sweep is not recorded says so
    by_id = {f["id"]: f for f in js}
    assert by_id["i"]["verdict"] == "reproduced" and by_id["iv"]["verdict"] == "inconclusive"
    assert by_id["i"]["parts"][0]["estimate"]["n"] == 3


def test_nothing_recorded_is_an_error(tmp_path, capsys):
    proc = run_main(findings.main, ["--results", str(tmp_path)], capsys)
    assert proc.returncode != 0 and "python sweeps/gamma_alpha.py" in proc.stderr


def test_a_claim_on_a_mix_of_failed_and_trained_seeds_says_so():
    t = _frame("gamma_alpha", {(0.0, 0.75): [0.30, None, 0.29],  # one seed diverged (AP 0), two trained
                               (2.0, 0.25): [0.34, 0.345, 0.005]}, GA)  # one seed below 1 AP
    f = _by_id(findings.claims_gamma_alpha(t))["i"]
    assert "mix of failed and trained seeds" in f.note
    assert "gamma=0, alpha=0.75 (1 of 3 seeds" in f.note and "gamma=2, alpha=0.25 (1 of 3 seeds" in f.note
    clean = _frame("gamma_alpha", {(0.0, 0.75): [0.30, 0.31, 0.29], (2.0, 0.25): [0.34, 0.345, 0.33]}, GA)
    assert "mix" not in _by_id(findings.claims_gamma_alpha(clean))["i"].note


def test_a_seed_that_stalled_far_below_its_settings_median_counts_as_failed():
    # the Libra combination at warm-up 500: 8.9, 60.9, 61.0 AP (seed 0 stalled after a loss spike,
    # no NaN): 8.9 < 60.9 / 2 is a failed run; 15.8 among 33.6-46.2 (median 34.7, half 17.35) too
    stalled = _frame("gamma_alpha", {(0.0, 0.75): [0.609, 0.089, 0.610], (2.0, 0.25): [0.462, 0.437, 0.347,
                                                                                     0.336, 0.158]}, GA)
    note = _by_id(findings.claims_gamma_alpha(stalled))["i"].note
    assert "gamma=0, alpha=0.75 (1 of 3 seeds" in note and "gamma=2, alpha=0.25 (1 of 5 seeds" in note
    # a wide but unbroken spread is not a mix: 18.0 is above half of the median 34.7
    spread = _frame("gamma_alpha", {(0.0, 0.75): [0.609, 0.590, 0.610], (2.0, 0.25): [0.462, 0.437, 0.347,
                                                                                    0.336, 0.180]}, GA)
    assert "mix" not in _by_id(findings.claims_gamma_alpha(spread))["i"].note


def test_findings_name_the_interval_method_and_the_divergence_rate(tmp_path, capsys):
    write_trials(tmp_path, "gamma_alpha", [
        trial_row("gamma_alpha", f"g{g}_a{a}_s{s}", metrics=None if ap is None else metrics_at(ap), gamma=g, alpha=a,
                  seed=s, status="diverged" if ap is None else "finished")
        for g, a, aps in ((0.0, 0.1, (None, None, 0.001)), (0.0, 0.75, (0.30, 0.31, 0.29)),
                          (2.0, 0.25, (0.34, 0.345, 0.33))) for s, ap in enumerate(aps)])
    md_path = run_main(findings.main, ["--results", str(tmp_path)], capsys).stdout.split()[0]
    md = open(md_path).read()
    assert "| t, fixed n | reproduced |" in md and "repeated t, looks" not in md
    ref = stats.binomtest(2, 3).proportion_ci(0.95, method="exact")  # alpha .1: 2 of 3 seeds diverged
    assert f"| gamma_alpha | gamma=0, alpha=0.1 | 2 / 3 | 67 [{100 * ref.low:.0f}, {100 * ref.high:.0f}] % |" in md
    assert "| gamma_alpha | gamma=2, alpha=0.25 | 0 / 3 | 0 [0, 71] % |" in md  # 1 - 0.025^(1/3) = 0.708

    findings.save_design(tmp_path, "gamma_alpha", findings.RepeatedT((3, 5)))
    md = open(run_main(findings.main, ["--results", str(tmp_path)], capsys).stdout.split()[0]).read()
    assert "| repeated t, looks at n = 3, 5 (97.50% each, Bonferroni) |" in md
    by_id = {f["id"]: f for f in json.load(open(tmp_path / "dashboards" / "findings.json"))}
    assert by_id["i"]["parts"][0]["estimate"]["method"].startswith("repeated t")


def test_an_interval_that_excludes_its_mean_says_why():
    """A repeated-t interval intersects the looks' intervals: a tight first look and a later seed
    far off can leave the newest mean outside it (speed/accuracy's timings did); the table says so
    rather than print "+6.1 [+5.1, +5.8]" bare. Values: the sweep's R-18 240 - 144 px ms/image."""
    from dashboards.stats import RepeatedT

    diffs = {0: 5.34, 1: 5.45, 2: 5.54, 3: 7.69, 4: 6.32}
    est = RepeatedT((3, 5)).difference(diffs, {s: 0.0 for s in diffs})
    assert not est.low <= est.mean <= est.high  # look 3's 97.5% t interval: 5.44 +- 0.43 (scipy by hand)
    part = findings.Part("ms/image", est, "greater", unit="ms")
    md = "\n".join(findings.table_lines([findings.Finding("v", "slower", "speed_accuracy", [part])]))
    assert "the mean is outside" in md
    inside = findings.Part("ms/image", RepeatedT((3, 5)).difference({0: 5.3, 1: 5.5, 2: 5.4, 3: 5.6, 4: 5.4},
                                                                      {s: 0.0 for s in range(5)}), "greater", unit="ms")
    assert "the mean is outside" not in "\n".join(findings.table_lines([findings.Finding("v", "s", "x", [inside])]))


def test_a_claim_is_taken_from_a_study_run_under_another_name(tmp_path, capsys):
    """`sweeps/anchor_density.py --name anchor_density_b --seeds 3 4 5 --until-settled` records under
    anchor_density_b; `--sweep anchor_density=anchor_density_b` reads claim (iv) from it, with the
    study's own design (repeated t, looks 3 and 5: the first look at 97.5%)."""
    from dashboards.stats import RepeatedT

    aps = {(1, (1.0,)): [0.28, 0.29, 0.27], (2, (0.5, 1.0, 2.0)): [0.33, 0.335, 0.32],
           (3, (0.5, 1.0, 2.0)): [0.34, 0.35, 0.335]}
    write_trials(tmp_path, "anchor_density_b", [
        trial_row("anchor_density_b", f"sc{sc}_s{seed}", metrics=metrics_at(ap), seed=seed, scales_per_octave=sc,
                  aspect_ratios=ratios) for (sc, ratios), seeds in aps.items() for seed, ap in zip((3, 4, 5), seeds)])
    findings.save_design(tmp_path, "anchor_density_b", RepeatedT((3, 5), 0.05))
    proc = run_main(findings.main, ["--results", str(tmp_path)], capsys)
    assert proc.returncode == 2 and "nothing recorded" in proc.stderr  # the study is not read without the flag

    proc = run_main(findings.main, ["--results", str(tmp_path), "--sweep", "anchor_density=anchor_density_b"], capsys)
    assert proc.returncode == 0, proc.stderr
    md_path, js_path = proc.stdout.split()
    assert "anchor_density's claims from the study `anchor_density_b`" in open(md_path).read()
    [iv] = [f for f in json.load(open(js_path)) if f["id"] == "iv"]
    two_by_three = iv["parts"][0]["estimate"]
    diffs = [100 * (b - a) for a, b in zip(aps[(1, (1.0,))], aps[(2, (0.5, 1.0, 2.0))])]
    half = stats.t.ppf(1 - 0.025 / 2, 2) * pd.Series(diffs).std() / 3 ** 0.5  # 97.5% two-sided at n=3
    assert two_by_three["n"] == 3 and two_by_three["mean"] == pytest.approx(sum(diffs) / 3)
    assert two_by_three["low"] == pytest.approx(sum(diffs) / 3 - half)
    assert iv["verdict"] == "reproduced"


@pytest.mark.parametrize("flag, message", [
    ("bogus=x", "--sweep bogus=x: SCRIPT is one of gamma_alpha"),
    ("anchor_density=../x", "--sweep anchor_density=../x: NAME is a sweep name"),
    ("anchor_density=", "NAME is a sweep name"),
    ("anchor_density=nope", "--sweep anchor_density=nope: no trials of sweep 'nope' under"),
])
def test_a_bad_study_name_is_refused_naming_the_flag(tmp_path, capsys, flag, message):
    write_trials(tmp_path, "gamma_alpha", [trial_row("gamma_alpha", "g2_s0", metrics=metrics_at(0.3), gamma=2.0)])
    proc = run_main(findings.main, ["--results", str(tmp_path), "--sweep", flag], capsys)
    assert proc.returncode == 2 and message in proc.stderr
