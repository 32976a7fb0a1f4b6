"""`omdx paper`: every study run by its own command, pooled into one report."""

import csv
import json
import re
import types

import jax
import numpy as np
import pytest

from omdx._cartpole_study import cartpole_study
from omdx._paper import _settings, QUICK
from omdx._report import mean_and_interval
from omdx._saved import stored_float_dtype
from omdx.cli import main


def _read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_paper_command_runs_every_study_and_reports_it(tmp_path, capsys):
    out = tmp_path / "paper"
    argv = ["paper", "--steps", "2000", "--seeds", "2", "--hidden", "3", "--distractors"]
    argv += ["--agents", "omd", "mle", "--tabular-seeds", "2", "--tabular-steps", "50"]
    argv += ["--tabular-points", "2", "--no-progress", "--checkpoint", "--out", str(out)]
    argv += ["--", "--eval-episodes", "3"]  # for every `omdx compare`
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # The command's x64 switches (the tabular studies' float64) do not outlive it.
    assert jax.config.jax_enable_x64  # tests/conftest.py's setting
    report = (out / "README.md").read_text()

    # Each tabular study is its own command's output, in its folder, shown in the report.
    for study, points in (("misspec", "--bounds-num"), ("bounds", "--bounds-num")):
        folder = out / f"tabular-{study}"
        settings = json.loads((folder / "settings.json").read_text())
        assert (settings["seeds"], settings["steps"], settings["bounds_num"]) == (2, 50, 2)
        assert f"](tabular-{study}/{study}.png)" in report
        assert (folder / f"{study}.png").stat().st_size > 0
        assert f"omdx tabular {study} --out {folder}" in report and f"{points} 2" in report
    assert json.loads((out / "tabular-noise/settings.json").read_text())["sigmas_num"] == 2
    # The report's misspec table holds summary.csv's mean J of each method at each bound.
    for row in _read_csv(out / "tabular-misspec/summary.csv"):
        line = next(
            line
            for line in report.split("## Tabular: expected return")[1].splitlines()
            if line.startswith(f"| {float(row['bound']):.3g} |")
        )
        assert f"{float(row['J']):.4g}" in line
    noise = report.split("## Tabular: an inexact inner solution")[1].split("## CartPole")[0]
    assert len([line for line in noise.splitlines() if re.match(r"\| \d", line)]) == 2

    # CartPole: one `omdx compare` folder per setting, pooled per seed from the runs' own
    # metrics (the last evaluation of each seed), and summarised over the seeds.
    setting = out / "cartpole" / "h3_d0"
    assert "omdx compare --eval-episodes 3 --agents omd mle --keep-going --steps 2000" in report
    assert "the paper's settings otherwise except `--eval-episodes 3`" in report
    assert report.split("`")[1].endswith("-- --eval-episodes 3")  # the whole command
    for agent in ("omd", "mle"):
        config = json.loads((setting / agent / "config.json").read_text())
        assert config["train"]["eval_episodes"] == 3 and config["seeds"] == 2
    study = _read_csv(out / "cartpole" / "study.csv")
    assert [(r["agent"], r["seed"]) for r in study] == [
        ("omd", "0"),
        ("omd", "1"),
        ("mle", "0"),
        ("mle", "1"),
    ]
    table_line = next(line for line in report.splitlines() if line.startswith("| 3 | 0 |"))
    for agent in ("omd", "mle"):
        metrics = _read_csv(setting / agent / "metrics.csv")
        last = {r["seed"]: r for r in metrics if r["step"] == "2000"}
        finals = []
        for row in (r for r in study if r["agent"] == agent):
            assert float(row["final_return"]) == pytest.approx(
                float(last[row["seed"]]["eval_return"])
            )
            assert float(row["final_model_error"]) == pytest.approx(
                float(last[row["seed"]]["model_error"])
            )
            finals.append(float(row["final_return"]))
        mean, half = mean_and_interval(finals)
        assert f"{mean:.1f} ± {half:.1f}" in table_line
        # In float32 (no --x64), although the tabular studies before ran in float64.
        assert stored_float_dtype(setting / agent / "agents.npz") == "float32"
    for figure in ("final_returns.png", "likelihood_vs_return.png"):
        assert (out / "cartpole" / figure).stat().st_size > 0
        assert f"(cartpole/{figure})" in report
    assert (out / "cartpole" / "study.md").read_text().count(table_line) == 1
    assert str(out / "README.md") in printed
    assert "continued from their checkpoints" not in report

    # The same command again continues every run from its checkpoint: finished, so the
    # study is the same, and the report says that its times are not the training's.
    before = (out / "cartpole" / "study.csv").read_text()
    assert main(argv[:-3] + ["--parts", "cartpole"] + argv[-3:]) == 0
    assert (out / "cartpole" / "study.csv").read_text() == before
    report = (out / "README.md").read_text()
    assert "continued from their checkpoints" in report and "## Tabular" not in report

    # A checkpoint that the runs could not continue (other settings) stops the command
    # before its first part, not after the tabular studies.
    tabular_results = out / "tabular-misspec" / "results.csv"
    written = tabular_results.stat().st_mtime_ns
    with pytest.raises(ValueError, match="written by a run with other settings"):
        main(argv[:-1] + ["4"])  # -- --eval-episodes 4
    assert tabular_results.stat().st_mtime_ns == written


def test_paper_command_checks_every_run_before_the_first(tmp_path):
    out = tmp_path / "paper"
    # 500 steps is not a multiple of the evaluation period: found before the tabular
    # studies, which come first, have written anything.
    with pytest.raises(ValueError, match="`steps` \\(500\\) must be a multiple"):
        main(["paper", "--steps", "500", "--out", str(out)])
    assert not out.exists()
    # Options for every `omdx compare`: not those that omdx paper sets, abbreviated or not.
    # Given at all: 200000 steps and the three agents are compare's own defaults.
    with pytest.raises(ValueError, match="--agents, --steps, --out are set by omdx paper"):
        main(["paper", "--out", str(out), "--", "--step", "200000", "--out", "elsewhere",
              "--agents", "omd", "mle", "vep"])  # fmt: skip
    with pytest.raises(ValueError, match="`--parts` leaves them out"):
        main(["paper", "--parts", "tabular", "--out", str(out), "--", "--inner-steps", "5"])
    with pytest.raises(SystemExit):  # argparse: not an option of omdx compare
        main(["paper", "--out", str(out), "--", "--bogus"])
    with pytest.raises(SystemExit):  # argparse: 0 distractors is the --hidden settings
        main(["paper", "--distractors", "0", "--out", str(out)])
    with pytest.raises(SystemExit):  # argparse: not a positive int
        main(["paper", "--tabular-seeds", "0", "--out", str(out)])
    assert not out.exists()


def _write_run(folder, seeds, finals, errors, diverged=(), blown_up=()):
    """A run's `summary.json` as `omdx compare` writes it, with the fields the study reads."""
    folder.mkdir(parents=True)
    summary = {
        "seeds": seeds,
        "final_return_per_seed": finals,
        "auc_per_seed": [f / 2 for f in finals],
        "final_model_error_per_seed": errors,
        "blown_up_seeds": list(blown_up),
    }
    if diverged:
        summary["diverged_seeds"] = list(diverged)
    (folder / "summary.json").write_text(json.dumps(summary))


def test_cartpole_study_names_diverged_and_blown_up_seeds(tmp_path):
    settings = [(3, 0), (32, 0), (32, 5)]
    for h, d in settings:
        _write_run(tmp_path / f"h{h}_d{d}" / "mle", [0, 1, 2], [10.0, 20.0, 60.0], [1e-3] * 3)
        _write_run(tmp_path / f"h{h}_d{d}" / "omd", [0, 2], [100.0, 200.0], [5.0, 7.0], [1], [2])
    study = cartpole_study(tmp_path, settings, ["omd", "mle"])
    rows = _read_csv(tmp_path / "study.csv")
    assert len(rows) == 3 * 6
    omd = [r for r in rows if (r["model_hidden"], r["agent"]) == ("3", "omd")]
    # The diverged seed has a row of its own, with no numbers; the blown-up one is kept.
    assert [(r["seed"], r["diverged"], r["blown_up"]) for r in omd] == [
        ("0", "False", "False"),
        ("2", "False", "True"),
        ("1", "True", "False"),
    ]
    assert np.isnan(float(omd[2]["final_return"]))
    line = study.table.splitlines()[2]
    mean, half = mean_and_interval([100.0, 200.0])
    assert f"| {mean:.1f} ± {half:.1f} (1 of 3 diverged, 1 blew up) |" in line
    mean, half = mean_and_interval([10.0, 20.0, 60.0])
    assert f"| {mean:.1f} ± {half:.1f} |" in line
    # OMD against MLE: of the 10 ways to pick 2 of the 5 final returns, only OMD's own
    # pair {100, 200} is as far from the other three as it is (150 against 30).
    assert line.endswith("| 0.100 |")
    assert "exact permutation test" in study.table
    assert all(path.stat().st_size > 0 for path in study.figures)


def test_cartpole_study_without_mle_and_with_every_seed_diverged(tmp_path):
    # OMD alone (no p-values: they are against MLE), and a setting where every seed
    # diverged: its panel of the likelihood figure has nothing to draw on a log axis.
    _write_run(tmp_path / "h3_d0" / "omd", [0, 1], [50.0, 70.0], [2.0, 3.0])
    _write_run(tmp_path / "h32_d5" / "omd", [], [], [], diverged=[0, 1])
    study = cartpole_study(tmp_path, [(3, 0), (32, 5)], ["omd"])
    header, _, first, second = study.table.splitlines()[:4]
    assert "p," not in header and "permutation" not in study.table
    assert "| 32 | 5 | - (2 of 2 diverged) | - | - |" == second
    mean, half = mean_and_interval([50.0, 70.0])
    assert f"| {mean:.1f} ± {half:.1f} |" in first
    assert all(path.stat().st_size > 0 for path in study.figures)


def test_quick_fills_only_the_options_not_given():
    args = types.SimpleNamespace(quick=True, **dict.fromkeys(QUICK))
    args.seeds, args.hidden = 7, [5]
    settings = _settings(args)
    assert settings == {**QUICK, "seeds": 7, "hidden": [5]}
