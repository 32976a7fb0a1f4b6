"""The compiled training run: seeds, reproducibility, bad configuration, learning."""

import dataclasses

import numpy as np
import pytest

import omdx
from omdx import AgentConfig, TrainConfig


TINY_AGENT = AgentConfig(q_hidden=16, model_hidden=16, vep_hidden=8)
TINY_RUN = TrainConfig(
    steps=400, random_steps=200, eval_every=200, eval_episodes=2, batch_size=32, evals_per_chunk=1
)


@pytest.fixture(scope="module")
def cartpole():
    return omdx.envs.make("CartPole-v1")


def test_vmapped_seeds_equal_single_seed_runs(cartpole):
    together = omdx.train(cartpole, TINY_AGENT, TINY_RUN, seeds=[3, 4, 5], progress=False)
    assert together.eval_returns.shape == (3, 2)
    assert list(together.eval_steps) == [200, 400]
    for i, seed in enumerate([3, 4, 5]):  # one compilation serves the three single runs
        alone = omdx.train(cartpole, TINY_AGENT, TINY_RUN, seeds=[seed], progress=False)
        np.testing.assert_allclose(alone.eval_returns[0], together.eval_returns[i], rtol=1e-5)
        for name, values in alone.metrics.items():
            np.testing.assert_allclose(
                values[0], together.metrics[name][i], rtol=1e-4, atol=1e-6, err_msg=name
            )
    again = omdx.train(cartpole, TINY_AGENT, TINY_RUN, seeds=[3, 4, 5], progress=False)
    np.testing.assert_array_equal(again.eval_returns, together.eval_returns)
    # Seeds in groups of 2 (one group, then a remainder of 1) give the same runs.
    grouped_run = dataclasses.replace(TINY_RUN, seed_group=2)
    grouped = omdx.train(cartpole, TINY_AGENT, grouped_run, seeds=[3, 4, 5], progress=False)
    np.testing.assert_allclose(grouped.eval_returns, together.eval_returns, rtol=1e-5)
    for name, values in grouped.metrics.items():
        np.testing.assert_allclose(
            values, together.metrics[name], rtol=1e-4, atol=1e-6, err_msg=name
        )
    # Updates happened (the second window is after the warm-up) and were finite.
    assert np.all(together.metrics["model_grad_norm"][:, 1] > 0)
    assert np.all(together.metrics["inner_result"] == 0)


def test_on_chunk_streams_every_evaluation(cartpole):
    chunks = []
    run = TrainConfig(
        steps=600,
        random_steps=200,
        eval_every=200,
        eval_episodes=1,
        batch_size=32,
        evals_per_chunk=2,
    )
    result = omdx.train(cartpole, TINY_AGENT, run, seeds=2, progress=False, on_chunk=chunks.append)
    assert [list(c["eval_steps"]) for c in chunks] == [[200, 400], [600]]
    streamed = np.concatenate([c["eval_returns"] for c in chunks], axis=1)
    np.testing.assert_array_equal(streamed, result.eval_returns)


def test_bad_configuration_raises_before_training(cartpole):
    with pytest.raises(ValueError, match="`batch_size`"):
        TrainConfig(batch_size=512, buffer_size=256)
    with pytest.raises(ValueError, match="`steps`"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="`eval_every`"):
        TrainConfig(steps=1500, eval_every=1000)
    with pytest.raises(ValueError, match="`epsilon`"):
        TrainConfig(epsilon=1.5)
    with pytest.raises(ValueError, match="`seed_group`"):
        TrainConfig(seed_group=0)
    with pytest.raises(ValueError, match="`agent`"):
        AgentConfig(agent="sac")
    with pytest.raises(ValueError, match="`adjoint`"):
        AgentConfig(adjoint="inverse")
    with pytest.raises(ValueError, match="CartPole-v1"):
        omdx.train("NoSuchEnv-v0", TINY_AGENT, TINY_RUN, progress=False)
    with pytest.raises(ValueError, match="`seeds`"):
        omdx.train(cartpole, TINY_AGENT, TINY_RUN, seeds=0, progress=False)
    with pytest.raises(ValueError, match="continuous"):
        omdx.train(omdx.envs.make("Pendulum-v1"), TINY_AGENT, TINY_RUN, progress=False)


def test_host_loop_trains_on_a_gymnasium_env():
    run = TrainConfig(steps=300, random_steps=150, eval_every=150, eval_episodes=2, batch_size=32)
    result = omdx.train_host("CartPole-v1", TINY_AGENT, run, seed=1, progress=False)
    assert result.eval_returns.shape == (1, 2)
    assert np.all(result.eval_returns >= 1)
    assert np.all(np.isfinite(result.metrics["model_loss"][:, -1]))
    with pytest.raises(TypeError, match="`env`"):
        omdx.train_host(42, TINY_AGENT, run, progress=False)
