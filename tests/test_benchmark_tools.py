"""The study tools under `benchmarks/` that turn result CSVs into tables: pooling,
divergence counts and permutation p-values (on small hand-made CSVs), and the labels the
benchmark scripts write (diverged seeds, the p-value method, the machine's load), and the
throughput benchmark's use of `omdx.train`'s internals."""

import csv
import pathlib
import sys
import types

import numpy as np
import pytest

from omdx import _report


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import cartpole_misspec  # noqa: E402
import misspec_pvalues  # noqa: E402
import misspec_summary  # noqa: E402
import throughput  # noqa: E402


def _write_study(path, runs, steps=(1000, 2000), q_real_loss=None):
    """`runs`: `{(agent, hidden, distractors): {seed: return}}`, one constant curve each;
    `q_real_loss`: `{(agent, hidden, distractors, seed): loss}` for a Q-loss column (1.0
    where not given)."""
    fields = ["agent", "model_hidden", "distractors", "seed", "step", "eval_return"]
    if q_real_loss is not None:
        fields.append("q_real_loss")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for (agent, hidden, distractors), seeds in runs.items():
            for seed, value in seeds.items():
                for step in steps:
                    row = dict(
                        agent=agent,
                        model_hidden=hidden,
                        distractors=distractors,
                        seed=seed,
                        step=step,
                        eval_return=value,
                    )
                    if q_real_loss is not None:
                        row["q_real_loss"] = q_real_loss.get(
                            (agent, hidden, distractors, seed), 1.0
                        )
                    writer.writerow(row)
    return path


def test_permutation_p_value_exact():
    # Fully separated groups of 3: only the observed split and its mirror are as extreme,
    # 2 of the C(6, 3) = 20 relabellings.
    p = _report.permutation_p_value(np.array([10.0, 11, 12]), np.array([0.0, 1, 2]))
    assert p == pytest.approx(2 / 20)
    assert _report.permutation_p_value(np.array([1.0, 2]), np.array([1.0, 2])) == 1.0


def test_merge_accepts_identical_reruns_and_rejects_conflicts(tmp_path):
    mle = {("mle", 3, 0): {0: 100.0, 1: 200.0}}
    first = _write_study(tmp_path / "a.csv", {**mle, ("omd", 3, 0): {0: 50.0, 1: 60.0}})
    rerun = _write_study(tmp_path / "b.csv", {**mle, ("vep", 3, 0): {0: 5.0, 1: 6.0}})
    merged = misspec_pvalues.merged_final_returns([first, rerun])
    assert sorted(merged) == [(3, 0, "mle"), (3, 0, "omd"), (3, 0, "vep")]
    np.testing.assert_array_equal(merged[(3, 0, "mle")], [100.0, 200.0])
    conflict = _write_study(tmp_path / "c.csv", {("mle", 3, 0): {0: 100.0, 1: 201.0}})
    with pytest.raises(ValueError, match="different final returns"):
        misspec_pvalues.merged_final_returns([first, conflict])


def test_summary_counts_missing_seeds_as_diverged(tmp_path):
    path = _write_study(
        tmp_path / "study.csv",
        {
            ("mle", 2, 0): {0: 10.0, 1: 20.0, 2: 30.0, 3: 40.0},
            ("omd", 2, 0): {0: 100.0, 2: 300.0},  # seeds 1 and 3 diverged
            ("omd", 32, 5): {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0},
        },
    )
    finals = misspec_pvalues.merged_final_returns([path])
    summary = misspec_summary.summarise(finals, seeds=4, agents=["mle", "omd"], reference="mle")
    omd = summary[(2, 0, "omd")]
    assert (omd.mean, omd.diverged, omd.blown_up) == (200.0, 2, None)  # no Q losses
    np.testing.assert_array_equal(omd.finals, [100.0, 300.0])
    # 12.706 (t quantile, 1 degree of freedom) * std(ddof=1) / sqrt(2)
    assert omd.half_width == pytest.approx(12.706 * np.std([100.0, 300.0], ddof=1) / np.sqrt(2))
    # Of the C(6, 2) = 15 ways to pick OMD's two seeds from the six returns, only the
    # observed one ({100, 300}) is as far from the rest.
    assert omd.p == pytest.approx(1 / 15)
    assert summary[(2, 0, "mle")].p is None  # no p-value against itself
    assert summary[(32, 5, "omd")].p is None  # no reference run in that setting
    table = misspec_summary.markdown(summary, ["mle", "omd"], "mle")
    assert "| 2 | 0 | 25.0 ± " in table
    assert "200.0 ± 1270.6 (2 diverged)" in table
    assert "| 32 | 5 | - | 2.5 ± 2.1 | - |" in table  # no MLE run there: no p-value
    with pytest.raises(ValueError, match="more than --seeds 3"):
        misspec_summary.summarise(finals, seeds=3, agents=["mle"], reference="mle")


def test_summary_counts_seeds_whose_final_q_loss_blew_up(tmp_path):
    runs = {("vep-x64", 4, 0): {0: 495.0, 1: 9.3, 2: 9.4}}
    losses = {("vep-x64", 4, 0, 1): 1e13, ("vep-x64", 4, 0, 2): 2e6}
    path = _write_study(tmp_path / "x64.csv", runs, q_real_loss=losses)
    ends = misspec_summary.curve_ends([path])
    assert ends[(4, 0, "vep-x64", 1)] == (2000, 1e13)
    finals = misspec_pvalues.merged_final_returns([path])
    arm = misspec_summary.summarise(finals, 3, ["vep-x64"], "mle", ends)[(4, 0, "vep-x64")]
    assert (arm.diverged, arm.blown_up) == (0, 2)
    strict = misspec_summary.summarise(finals, 3, ["vep-x64"], "mle", ends, blowup_loss=1e7)
    assert strict[(4, 0, "vep-x64")].blown_up == 1
    table = misspec_summary.markdown(strict, ["vep-x64"], "mle")
    assert "(1 blown up)" in table


def test_permutation_method_says_exact_only_when_every_p_value_was():
    assert _report.permutation_is_exact(10, 10)  # C(20, 10) = 184 756
    assert not _report.permutation_is_exact(12, 12)  # C(24, 12) = 2 704 156
    exact = _report.p_value_method([True, True])
    assert "exact permutation test" in exact and "sampled" not in exact
    mixed = _report.p_value_method([True, False, True])
    assert "two-sided exact" not in mixed
    assert "random sample of 200 000" in mixed and "1 of the 3 p-values here was sampled" in mixed
    assert _report.format_p(0.0123, exact=False) == "0.012†"
    assert _report.format_p(0.0001) == "< 0.001"


def test_summary_marks_a_sampled_p_value(tmp_path):
    # 12 seeds against 12: C(24, 12) > EXACT_LIMIT, so the p-value is sampled.
    runs = {
        ("mle", 2, 0): {seed: float(seed) for seed in range(12)},
        ("omd", 2, 0): {seed: 100.0 + seed for seed in range(12)},
    }
    finals = misspec_pvalues.merged_final_returns([_write_study(tmp_path / "s.csv", runs)])
    summary = misspec_summary.summarise(finals, seeds=12, agents=["mle", "omd"], reference="mle")
    assert summary[(2, 0, "omd")].p_exact is False
    assert summary[(2, 0, "mle")].p_exact is None
    assert "< 0.001†" in misspec_summary.markdown(summary, ["mle", "omd"], "mle")


def test_diverged_note_names_each_seed_and_its_step():
    note = cartpole_misspec.diverged_note
    assert note([], 10) == ""
    assert note([(3, 112_000)], 10) == "seed 3 of 10 diverged, by step 112 000"
    assert (
        note([(3, 112_000), (4, 154_000)], 10)
        == "seeds 3 and 4 of 10 diverged, by steps 112 000 and 154 000"
    )
    assert note([(0, 5000), (2, None), (7, 9000)], 8) == (
        "seeds 0, 2 and 7 of 8 diverged, by steps 5 000, ? and 9 000"
    )
    cell = cartpole_misspec.final_cell
    assert cell(210.04, 31.26, note([(3, 112_000)], 10)) == (
        "210.0 ± 31.3 (seed 3 of 10 diverged, by step 112 000)"
    )
    assert cell(210.04, 31.26) == "210.0 ± 31.3"
    assert cell(np.nan, np.nan, "seeds 0 and 1 of 2 diverged, by steps 3000 and 4000") == (
        "seeds 0 and 1 of 2 diverged, by steps 3000 and 4000"
    )


def test_divergence_steps_follow_omdx_train():
    # Four runs, evaluations at steps 1000..5000; updates start at step 2000, so the first
    # window's losses are NaN by design (not a divergence). Run 1's return turns infinite at
    # 3000; run 2's Q loss at 4000; run 3 stays finite; run 0 has a NaN model loss at 5000.
    steps = np.arange(1, 6) * 1000
    returns = np.ones((4, 5))
    returns[1, 2:] = np.inf
    q_loss = np.ones((4, 5))
    q_loss[:, 0] = np.nan
    q_loss[2, 3] = np.nan
    model_loss = np.zeros((4, 5))
    model_loss[:, 0] = np.nan
    model_loss[0, 4] = np.nan
    result = types.SimpleNamespace(
        seeds=np.array([10, 11, 12, 13]),
        eval_steps=steps,
        eval_returns=returns,
        metrics={"q_real_loss": q_loss, "model_loss": model_loss, "model_error": q_loss * 0},
    )
    found = cartpole_misspec.divergence_steps(result, learning_starts=1000)
    assert found == [5000, 3000, 4000, None]
    # The mask `omdx.train` raises with marks the same runs.
    from omdx._train import _divergence, _updated_metrics

    checked = _updated_metrics(result.metrics, steps - 1 >= 1000)
    _, diverged = _divergence(returns, checked, result.seeds, steps)
    assert diverged.tolist() == [step is not None for step in found]


def test_throughput_times_the_run_omdx_train_sets_up():
    # The benchmark builds the compiled run from `omdx.train`'s private pieces: it must
    # keep up with them (a run without its traced hyperparameters fails to trace).
    import omdx

    env = omdx.envs.make("CartPole-v1")
    agent_config = omdx.AgentConfig(q_hidden=8, model_hidden=4)
    train_kwargs = {"batch_size": 32, "eval_episodes": 1}
    timed_chunk = throughput.prepared_compiled_run(env, agent_config, 2, 500, 1, train_kwargs)
    assert timed_chunk() > 0
