"""The `omdx` console script and the run summary it prints."""

import csv
import json
import types

import equinox as eqx
import jax
import numpy as np
import pytest

import omdx
from omdx._checkpoint import save_checkpoint
from omdx._report import run_summary
from omdx._saved import save_agents
from omdx.cli import _make_env, build_parser, main


def test_run_summary_by_hand():
    returns = np.array([[10.0, 20.0, 40.0], [0.0, 30.0, 30.0]])
    result = types.SimpleNamespace(
        seeds=np.array([0, 1]),
        eval_steps=np.array([100, 200, 300]),
        eval_returns=returns,
        metrics={"model_error": np.array([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])},
    )
    summary = run_summary(result, final_evals=2)
    assert summary["final_return_per_seed"] == [30.0, 30.0]
    # Trapezoid over [100, 300]: (10 + 2*20 + 40) / 4 and (0 + 2*30 + 30) / 4.
    np.testing.assert_allclose(summary["auc_per_seed"], [22.5, 22.5])
    assert summary["final_return_mean"] == 30.0 and summary["final_return_ci95"] == 0.0
    assert summary["final_model_error_mean"] == 5.0
    assert summary["final_model_error_per_seed"] == [3.0, 7.0]
    assert run_summary(result)["final_return_per_seed"] == [40.0, 30.0]
    # Without the agents' `q_real_loss` metric there is no loss to flag.
    assert "blown_up_seeds" not in run_summary(result, blowup_loss=1.0)


TINY = "--steps 400 --random-steps 200 --eval-every 200 --eval-episodes 2 --batch-size 32"
# The (seed, step) rows of `metrics.csv` for 2 seeds on the `TINY` budget.
TINY_SEEDS_AND_STEPS = [(0, 200), (0, 400), (1, 200), (1, 400)]


def _seeds_and_steps(rows: list[dict]) -> list[tuple[int, int]]:
    return sorted((int(r["seed"]), int(r["step"])) for r in rows)


def test_demo_command_compares_omd_and_mle(tmp_path, capsys):
    # The README's main job (`omdx demo`), on a tiny budget: its own defaults otherwise.
    out = tmp_path / "demo"
    argv = ["demo", "--seeds", "2", "--q-hidden", "16", *TINY.split(), "--no-progress"]
    assert main(argv + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (out / "compare.md").read_text()
    assert table.startswith("# omdx demo: OMD vs MLE with a misspecified model")
    assert "model_hidden=3" in table  # the demo's too-small model
    finals = {}
    for agent in ("omd", "mle"):
        config = json.loads((out / agent / "config.json").read_text())
        assert config["agent"]["agent"] == agent and config["agent"]["model_hidden"] == 3
        assert config["train"]["steps"] == 400 and config["seeds"] == 2
        with (out / agent / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert _seeds_and_steps(rows) == TINY_SEEDS_AND_STEPS
        # The first window is all random steps: no update, so no mean loss (NaN).
        losses = {int(r["step"]): float(r["model_loss"]) for r in rows if r["seed"] == "0"}
        assert np.isnan(losses[200]) and np.isfinite(losses[400])
        summary = json.loads((out / agent / "summary.json").read_text())
        last = {int(r["seed"]): float(r["eval_return"]) for r in rows if r["step"] == "400"}
        assert summary["final_return_per_seed"] == [last[0], last[1]]
        assert len(summary["devices"]) == 2  # one seed per CPU device (tests/conftest.py)
        assert (out / agent / "curves.png").stat().st_size > 0
        finals[agent] = f"{summary['final_return_mean']:.1f} ± {summary['final_return_ci95']:.1f}"
    # One table row per agent, with its final return, printed and written.
    for agent, final in finals.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {agent} |"))
        assert final in row
        assert row in printed
    assert (out / "curves.png").stat().st_size > 0


def _host_arrays(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array))]


def test_train_command_sweeps_in_one_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    argv = ["train", "--agent", "mle", "--seeds", "2", "--q-hidden", "16", "--model-hidden", "8"]
    argv += ["--sweep", "model-lr=1e-3,3e-3", "--sweep", "epsilon=0.1,0.3"]
    argv += TINY.split() + ["--no-progress", "--out", str(out)]
    results = []
    train = omdx._train.train
    monkeypatch.setattr(
        omdx._train, "train", lambda *a, **k: results.append(train(*a, **k)) or results[-1]
    )
    assert main(argv) == 0
    # The final agents of every run are saved, in the order of `seeds` and the sweep.
    saved = omdx.load_agents(out)
    np.testing.assert_array_equal(saved.seeds, [0, 1, 0, 1])
    np.testing.assert_array_equal(saved.hyperparameters["model_lr"], [1e-3, 1e-3, 3e-3, 3e-3])
    np.testing.assert_array_equal(saved.hyperparameters["epsilon"], [0.1, 0.1, 0.3, 0.3])
    assert (saved.env_id, saved.host, saved.agent_config.q_hidden) == ("CartPole-v1", False, 16)
    (points,) = results
    for run, (point, seed) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        trained = jax.tree.map(
            lambda x: x[seed] if eqx.is_array(x) else x, points[point].final_state.agent
        )
        for got, expected in zip(_host_arrays(saved.agent(run)), _host_arrays(trained)):
            np.testing.assert_array_equal(got, expected)
    printed = capsys.readouterr().out
    assert printed.startswith("# omdx train: mle")
    assert "| agent | model_lr | epsilon | final return | AUC |" in printed
    # The heading names every setting that differs from the command's defaults.
    heading = "CartPole-v1, model_hidden=8, distractors=0, 400 steps, 2 seeds, adjoint=identity, "
    heading += "q_hidden=16, batch_size=32, random_steps=200, eval_every=200, eval_episodes=2."
    assert heading in printed
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    # One row per point, seed and evaluation, with the point's values.
    keys = sorted((float(r["model_lr"]), float(r["epsilon"]), int(r["seed"])) for r in rows)
    assert keys == sorted(
        (lr, eps, seed) for lr, eps in [(1e-3, 0.1), (3e-3, 0.3)] for seed in (0, 1) for _ in "ab"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert [p["hyperparameters"] for p in summary["points"]] == [
        {"model_lr": 1e-3, "epsilon": 0.1},
        {"model_lr": 3e-3, "epsilon": 0.3},
    ]
    for point in summary["points"]:
        finals = {
            int(r["seed"]): float(r["eval_return"])
            for r in rows
            if r["step"] == "400" and float(r["model_lr"]) == point["hyperparameters"]["model_lr"]
        }
        assert point["final_return_per_seed"] == [finals[0], finals[1]]
        # The point's row of the printed table, with its values and final return.
        values = point["hyperparameters"]
        final = f"{point['final_return_mean']:.1f} ± {point['final_return_ci95']:.1f}"
        assert f"| mle | {values['model_lr']:g} | {values['epsilon']:g} | {final} |" in printed
    assert json.loads((out / "config.json").read_text())["sweep"]["epsilon"] == [0.1, 0.3]
    # `omdx evaluate` evaluates each saved run, the in-memory agent's returns in its row.
    assert main(["evaluate", str(out), "--episodes", "3", "--seed", "4"]) == 0
    with (out / "evaluation.csv").open() as f:
        evaluation = list(csv.DictReader(f))
    assert [(int(r["seed"]), float(r["model_lr"])) for r in evaluation] == [
        (0, 1e-3),
        (1, 1e-3),
        (0, 3e-3),
        (1, 3e-3),
    ]
    last = jax.tree.map(lambda x: x[1] if eqx.is_array(x) else x, points[1].final_state.agent)
    expected = omdx.evaluate(saved.make_env(), last, jax.random.PRNGKey(4), 3)
    assert float(evaluation[3]["mean_return"]) == pytest.approx(float(expected), rel=1e-6)
    printed = capsys.readouterr().out
    assert "| run | agent | model_lr | epsilon | seeds | mean return |" in printed
    with pytest.raises(ValueError, match="`--sweep` expects NAME=V1,V2"):
        main(["train", "--sweep", "model_lr=fast", "--out", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="cannot vary 'q_hidden'"):
        main(["train", "--sweep", "q_hidden=8,16", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_bad_arguments_fail_before_training(tmp_path):
    with pytest.raises(SystemExit):  # argparse rejects an unknown adjoint
        main(["train", "--adjoint", "newton", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="`batch_size`"):
        main(["train", "--steps", "100", "--eval-every", "100", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x" / "metrics.csv").exists()
    with pytest.raises(ValueError, match="`--cpu-devices`"):
        main(["train", "--cpu-devices", "0", "--out", str(tmp_path / "y")])
    # Once JAX has computed in a process (here on tests/conftest.py's two CPU devices),
    # another count cannot be had. Compute first, so the check does not depend on which
    # tests ran before it in this process (alone, it would start a 200 000-step run).
    jax.block_until_ready(jax.numpy.zeros(2) + 1)
    with pytest.raises(ValueError, match="`--cpu-devices 3`"):
        main(["train", "--cpu-devices", "3", "--out", str(tmp_path / "z")])
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_a_gymnasium_id_trains_in_the_host_loop(tmp_path, capsys):
    # Acrobot-v1 is no JAX environment of omdx: it runs in the host loop, every seed and
    # sweep point in lockstep.
    out = tmp_path / "acrobot"
    argv = ["train", "--env", "Acrobot-v1", "--agent", "mle", "--seeds", "2"]
    argv += ["--model-hidden", "4", "--q-hidden", "8", "--sweep", "epsilon=0.1,0.3"]
    assert main(argv + [*TINY.split(), "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["env"] == "Acrobot-v1" and config["host"] is True
    saved = omdx.load_agents(out / "agents.npz")
    assert saved.host and isinstance(saved.make_env(), omdx.envs.HostEnv)
    np.testing.assert_array_equal(saved.agents.updates, [200] * 4)
    # `omdx evaluate` finds the run in its parent folder too; it steps every run's
    # episodes side by side, as `omdx.evaluate_host` steps one run's.
    assert main(["evaluate", str(tmp_path), "--episodes", "2"]) == 0
    with (out / "evaluation.csv").open() as f:
        evaluation = [float(r["mean_return"]) for r in csv.DictReader(f)]
    alone = [omdx.evaluate_host(saved.make_env(), saved.agent(i), 2) for i in range(4)]
    np.testing.assert_allclose(evaluation, alone, rtol=1e-6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no agents.npz"):
        main(["evaluate", str(tmp_path / "empty")])
    with pytest.raises(ValueError, match="does not exist"):
        main(["evaluate", str(tmp_path / "nothing")])
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    for epsilon in (0.1, 0.3):
        point_rows = [r for r in rows if float(r["epsilon"]) == epsilon]
        assert _seeds_and_steps(point_rows) == TINY_SEEDS_AND_STEPS
    # Acrobot pays -1 per step: an evaluation episode returns between -500 and 0.
    returns = [float(r["eval_return"]) for r in rows]
    assert all(-500 <= value <= 0 for value in returns), returns
    summary = json.loads((out / "summary.json").read_text())
    for point in summary["points"]:
        epsilon = point["hyperparameters"]["epsilon"]
        last = {
            int(r["seed"]): float(r["eval_return"])
            for r in rows
            if r["step"] == "400" and float(r["epsilon"]) == epsilon
        }
        assert point["final_return_per_seed"] == [last[0], last[1]]
    assert "Acrobot-v1" in capsys.readouterr().out and (out / "curves.png").exists()


def test_bad_environments_fail_before_any_file(tmp_path):
    bad = str(tmp_path / "bad")
    with pytest.raises(ValueError, match="Unknown `--env` 'NoSuchEnv-v0'"):
        main(["train", "--env", "NoSuchEnv-v0", "--out", bad])
    for host in [["--host"], []]:  # stepped in Python, or omdx's JAX environment
        with pytest.raises(ValueError, match="continuous actions.*`--action-bins N`"):
            main(["train", "--env", "Pendulum-v1", *host, "--out", bad])
        with pytest.raises(ValueError, match="`--action-bins 3`: .*already has 2 discrete"):
            main(["train", "--env", "CartPole-v1", "--action-bins", "3", *host, "--out", bad])
        with pytest.raises(ValueError, match="`--action-bins 1`: `bins` must be"):
            main(["train", "--env", "Pendulum-v1", "--action-bins", "1", *host, "--out", bad])
    assert not (tmp_path / "bad").exists()


def test_action_bins_discretise_a_continuous_env():
    args = build_parser().parse_args(
        ["train", "--env", "Pendulum-v1", "--action-bins", "5", "--distractors", "1"]
    )
    env, host = _make_env(args)
    assert not host and (env.num_actions, env.observation_size) == (5, 4)
    np.testing.assert_allclose(env.actions[:, 0], [-1.6, -0.8, 0.0, 0.8, 1.6])
    args.host = True
    env, host = _make_env(args)
    assert host and (env.num_actions, env.observation_size) == (5, 4)
    assert env.env.action(0) == pytest.approx([-1.6])


def test_loading_agents_names_what_is_wrong(tmp_path, capsys):
    with pytest.raises(ValueError, match="does not exist"):
        omdx.load_agents(tmp_path / "nothing.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not an agents file of omdx"):
        omdx.load_agents(tmp_path / "one.npy")
    np.savez(tmp_path / "other.npz", settings=np.array(json.dumps({"env": "CartPole-v1"})))
    with pytest.raises(ValueError, match="not an agents file of omdx .it is another file"):
        omdx.load_agents(tmp_path / "other.npz")
    env = omdx.envs.make("CartPole-v1")
    config = omdx.AgentConfig(q_hidden=8, model_hidden=4, vep_hidden=4)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    agents = eqx.filter_vmap(lambda key: omdx.init_agent(key, env, config))(keys)
    save_checkpoint(tmp_path / "checkpoint.npz", {}, {}, agents, np.zeros(1), np.zeros(1), {})
    with pytest.raises(ValueError, match="not an agents file of omdx .it is a checkpoint"):
        omdx.load_agents(tmp_path / "checkpoint.npz")
    # Run 1 diverged: its agent holds NaN, so `omdx evaluate` names it instead of scoring
    # the policy that argmax picks from NaN Q-values.
    agents = eqx.tree_at(lambda a: a.q, agents, replace_fn=_nan_in_run_1)
    settings = {"id": "CartPole-v1", "distractors": 0, "action_bins": None, "host": False}
    run = tmp_path / "run"
    run.mkdir()
    path = run / "agents.npz"
    save_agents(path, settings, env, config, np.array([7, 8]), {}, agents)
    assert omdx.load_agents(run).seeds.tolist() == [7, 8]
    assert main(["evaluate", str(run), "--episodes", "2"]) == 0
    with (run / "evaluation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["diverged"] for r in rows] == ["False", "True"] and rows[1]["mean_return"] == "nan"
    assert 1 <= float(rows[0]["mean_return"]) <= 500
    assert "(seed 8 diverged: not evaluated)" in capsys.readouterr().out
    # A file of another precision: refused alone, and with others before any evaluation.
    with np.load(path) as data:
        arrays = dict(data)
    stored = json.loads(str(arrays["settings"]))
    other = tmp_path / "float32"
    other.mkdir()
    as_float32 = np.array(json.dumps(stored | {"float dtype": "float32"}))
    np.savez(other / "agents.npz", **arrays | {"settings": as_float32})
    with pytest.raises(ValueError, match="turn `jax_enable_x64` off first"):
        omdx.load_agents(other)
    (run / "evaluation.csv").unlink()
    with pytest.raises(ValueError, match="different precisions"):
        main(["evaluate", str(run), str(other)])
    assert not (run / "evaluation.csv").exists()
    np.savez(path, **arrays | {"state_0": np.zeros(5)})
    with pytest.raises(ValueError, match="holds a state array of float64\\[5\\]"):
        omdx.load_agents(path)


def _nan_in_run_1(q):
    return jax.tree.map(lambda x: x.at[1].set(np.nan) if eqx.is_inexact_array(x) else x, q)


def test_tabular_command_writes_its_files(tmp_path, capsys):
    out = tmp_path / "misspec"
    argv = ["tabular", "misspec", "--seeds", "2", "--steps", "200", "--bounds", "1,3"]
    assert main(argv + ["--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    # One row per method, bound and seed (the tabular seeds count from 1).
    assert sorted((r["method"], float(r["bound"]), int(r["seed"])) for r in rows) == sorted(
        (method, bound, seed)
        for method in ("OMD", "MLE")
        for bound in (1.0, 3.0)
        for seed in (1, 2)
    )
    with (out / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 4
    for row in summary:
        runs = [
            float(r["J"])
            for r in rows
            if (r["method"], r["bound"]) == (row["method"], row["bound"])
        ]
        assert int(row["n"]) == 2
        np.testing.assert_allclose(float(row["J"]), np.mean(runs))
    assert (out / "summary.md").read_text().strip() in printed
    assert json.loads((out / "settings.json").read_text())["steps"] == 200
    assert (out / "misspec.png").stat().st_size > 0
    with pytest.raises(SystemExit):  # argparse: not a positive int
        main(["tabular", "misspec", "--seeds", "0", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def _fake_final_state(env, agent_config, seeds: int):
    """What a `TrainResult`'s `final_state` holds that the command reads: the runs' keys
    (their devices) and agents (saved to agents.npz), here freshly initialised."""
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    agents = eqx.filter_vmap(lambda key: omdx.init_agent(key, env, agent_config))(keys)
    return types.SimpleNamespace(key=keys, agent=agents)


def test_a_diverged_seed_is_reported_apart(tmp_path, capsys, monkeypatch):
    import omdx._train

    # `train` as it ends when seed 1 diverges in the last chunk (no training: the CLI's
    # handling of the error is under test).
    calls = []

    def diverging_train(env, agent_config, train_config, *, seeds, on_chunk, **kwargs):
        calls.append(kwargs)
        steps, returns = np.array([200, 400]), np.array([[10.0, 20.0], [15.0, 9.0], [30.0, 40.0]])
        loss = np.array([[1.0, 1.0], [1.0, np.nan], [1.0, 1.0]])
        metrics = {"model_loss": loss, "model_error": np.ones((3, 2))}
        seed_list = np.arange(seeds)
        on_chunk(
            {
                "eval_steps": steps,
                "eval_returns": returns,
                "metrics": metrics,
                "seeds": seed_list,
                "hyperparameters": {},
            }
        )
        state = _fake_final_state(env, agent_config, seeds)
        result = omdx.TrainResult(seed_list, steps, returns, metrics, state)
        raise omdx.TrainingDiverged("seed 1 diverged", result, np.array([False, True, False]))

    monkeypatch.setattr(omdx._train, "train", diverging_train)
    out = tmp_path / "run"
    argv = ["train", "--agent", "mle", "--seeds", "3", *TINY.split(), "--no-progress"]
    argv += ["--steps", "2000"]  # of which the runs made 400 before stopping
    assert main(argv + ["--keep-going", "--out", str(out)]) == 1  # all written, then failure
    assert calls[-1]["stop_on_divergence"] is False
    printed = capsys.readouterr()
    assert "warning: mle: seed 1 diverged" in printed.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_return_per_seed"] == [20.0, 40.0]  # seeds 0 and 2
    assert summary["diverged_seeds"] == [1] and summary["last_eval_step"] == 400
    rate = 400 * 3 / summary["wall_seconds"]  # the steps made, not the 2000 asked for
    assert np.isclose(summary["env_steps_per_second"], rate)
    assert "30.0 ± 127.1 (seed 1 diverged by step 400)" in printed.out
    with (out / "metrics.csv").open() as f:  # the stream has every seed, as it came
        assert sorted({int(r["seed"]) for r in csv.DictReader(f)}) == [0, 1, 2]
    # Every seed's agent is saved, the diverged one's too (to see what went wrong).
    np.testing.assert_array_equal(omdx.load_agents(out).seeds, [0, 1, 2])


def test_a_blown_up_seed_is_named_and_kept(tmp_path, capsys, monkeypatch):
    import omdx._train

    # `train` as it ends when seed 2's Q-function has grown without bound but stayed finite
    # (no training: the CLI's reading of the result is under test).
    def blown_up_train(env, agent_config, train_config, *, seeds, on_chunk, **kwargs):
        steps, returns = np.array([200, 400]), np.array([[10.0, 20.0], [15.0, 40.0], [30.0, 9.0]])
        q_real_loss = np.array([[1.0, 10.0], [3.0, 2e6], [1e4, 5e11]])
        metrics = {"q_real_loss": q_real_loss, "model_error": np.ones((3, 2))}
        state = _fake_final_state(env, agent_config, seeds)
        return omdx.TrainResult(np.arange(seeds), steps, returns, metrics, state)

    monkeypatch.setattr(omdx._train, "train", blown_up_train)
    out = tmp_path / "run"
    argv = ["train", "--agent", "vep", "--seeds", "3", *TINY.split(), "--no-progress"]
    assert main(argv + ["--blowup-loss", "1e7", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_q_real_loss_per_seed"] == [10.0, 2e6, 5e11]
    assert summary["blown_up_seeds"] == [2]  # 2e6 is under this threshold
    assert summary["final_return_per_seed"] == [20.0, 40.0, 9.0]  # kept in the statistics
    assert "23.0 ± 39.0 (seed 2 blew up)" in printed.out
    assert "warning: vep: seeds [2] ended with a Bellman loss" in printed.err
    # The default threshold (1e6) names seed 1 too.
    assert main(argv + ["--out", str(tmp_path / "default")]) == 0
    summary = json.loads((tmp_path / "default" / "summary.json").read_text())
    assert summary["blown_up_seeds"] == [1, 2]
    with pytest.raises(ValueError, match="`--blowup-loss` must be a positive number"):
        main(argv + ["--blowup-loss", "0", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_train_command_continues_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    base = ["train", "--seeds", "2", "--q-hidden", "8", "--model-hidden", "4", "--no-progress"]
    base += ["--random-steps", "200", "--eval-every", "200", "--eval-episodes", "2"]
    base += ["--batch-size", "32", "--buffer-size", "800", "--checkpoint", "--out", str(out)]
    # --evals-per-chunk 1: the checkpoint is rewritten after every evaluation.
    assert main(base + ["--steps", "400", "--evals-per-chunk", "1"]) == 0
    first = sorted((out / "metrics.csv").read_text().splitlines())
    assert (out / "checkpoint.npz").exists()
    # More steps: the two new evaluations only, after the four rows already there.
    # (`--evals-per-chunk` is not part of the run: it may change.)
    assert main(base + ["--steps", "800", "--evals-per-chunk", "2"]) == 0
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    steps = sorted({int(r["step"]) for r in rows})
    assert steps == [200, 400, 600, 800] and len(rows) == 8
    lines = (out / "metrics.csv").read_text().splitlines()
    assert set(first) <= set(lines)  # the history, unchanged (its rows in seed order)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 400
    # An uninterrupted run of 800 steps writes the same rows.
    whole = tmp_path / "whole"
    argv = [a if a != str(out) else str(whole) for a in base if a != "--checkpoint"]
    assert main(argv + ["--steps", "800"]) == 0
    assert sorted((whole / "metrics.csv").read_text().splitlines()) == sorted(lines)
    continued, uninterrupted = omdx.load_agents(out), omdx.load_agents(whole / "agents.npz")
    for got, expected in zip(_host_arrays(continued.agents), _host_arrays(uninterrupted.agents)):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="other settings"):
        main(base + ["--steps", "800", "--q-lr", "1e-3"])
    # The host loop does not continue the compiled run's checkpoint, but keeps its own
    # (that it continues bit for bit is tested in tests/test_train.py).
    with pytest.raises(ValueError, match=r"written by `omdx.train` \(a JAX environment\)"):
        main(base + ["--steps", "800", "--host"])
    host = tmp_path / "host"
    host_base = [a if a != str(out) else str(host) for a in base]
    host_base += ["--host", "--random-steps", "100", "--eval-every", "100"]
    assert main(host_base + ["--steps", "200"]) == 0
    first = set((host / "metrics.csv").read_text().splitlines())
    assert main(host_base + ["--steps", "300"]) == 0
    assert json.loads((host / "summary.json").read_text())["resumed_from_step"] == 200
    with (host / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert _seeds_and_steps(rows) == [(seed, step) for seed in (0, 1) for step in (100, 200, 300)]
    assert first <= set((host / "metrics.csv").read_text().splitlines())
    saved = omdx.load_agents(host)
    assert saved.host
    np.testing.assert_array_equal(saved.agents.updates, [200, 200])
