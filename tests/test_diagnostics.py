"""bigbatch_jax.diagnostics against closed forms, and experiments.analyze end to end."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bigbatch_jax import diagnostics, training
from tests.test_training import tiny_config


def _orthogonal(n, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
  return q


def _quadratic(eigenvalues, seed=0):
  """0.5 w^T A w with A = Q diag(eigenvalues) Q^T, over a two-leaf pytree."""
  n = len(eigenvalues)
  q = _orthogonal(n, seed)
  a = jnp.asarray(q @ np.diag(eigenvalues) @ q.T, jnp.float32)

  def loss_fn(params):
    w = jnp.concatenate([params["a"].ravel(), params["b"]])
    return 0.5 * w @ a @ w

  params = {"a": jnp.ones((n // 2 - 1, 2)), "b": jnp.ones((n - 2 * (n // 2 - 1),))}
  return loss_fn, params


# --- weight distance -----------------------------------------------------------


def test_weight_distance_total_and_fit_recovers_log_growth(tmp_path):
  w0 = {"fc1": jnp.zeros((2, 2)), "fc2": jnp.zeros(3)}
  w = {"fc1": jnp.full((2, 2), 1.0), "fc2": jnp.full(3, 2.0)}
  assert float(jax.jit(diagnostics.weight_distance)(w, w0)) == pytest.approx(np.sqrt(4 + 12))
  per_layer = diagnostics.weight_distances(w, w0)
  assert float(per_layer["weight_distance/fc2"]) == pytest.approx(np.sqrt(12))

  steps = np.arange(1, 200, 7, dtype=float)
  distances = 1.7 * np.log(steps) + 0.3
  fit = diagnostics.fit_weight_distance(steps, distances)
  assert fit["slope"] == pytest.approx(1.7) and fit["intercept"] == pytest.approx(0.3)
  assert fit["r2"] == pytest.approx(1.0) and fit["num_points"] == len(steps)

  # The same from a metrics file, with points after max_step off the log law.
  log = training.MetricsLog(str(tmp_path / "metrics.jsonl"))
  for t, d in zip(steps, distances):
    log.write({"step": int(t), "weight_distance": d if t <= 120 else 0.0})
  log.write({"step": 5, "test_accuracy": 0.5})  # an evaluation record: skipped
  fit = diagnostics.fit_weight_distance(str(tmp_path), max_step=120)
  assert fit["slope"] == pytest.approx(1.7, rel=1e-6)
  with pytest.raises(ValueError, match="max_step"):
    diagnostics.fit_weight_distance(steps, distances, max_step=0)


# --- Hessian and sharpness -----------------------------------------------------


def test_lanczos_recovers_the_top_eigenvalues_of_a_known_spectrum():
  rest = np.random.default_rng(1).uniform(-1.0, 1.0, 197)
  spectrum = np.concatenate([[10.0, 7.0, 5.0], rest])
  loss_fn, params = _quadratic(spectrum)
  top = jax.jit(
    functools.partial(diagnostics.hessian_top_eigenvalues, loss_fn, k=3, num_iterations=40)
  )(params, jax.random.key(0))
  np.testing.assert_allclose(top, [10.0, 7.0, 5.0], rtol=1e-3)


def test_lanczos_restarts_when_the_krylov_space_is_invariant():
  # Three distinct eigenvalues: the Krylov space is invariant after 3 steps.
  # Without a restart the tridiagonal matrix gets spurious zero Ritz values;
  # with it every Ritz value lies in the spectrum's range [1, 4].
  spectrum = np.array([4.0] * 10 + [2.0] * 10 + [1.0] * 10)
  values = diagnostics.lanczos_eigenvalues(
    lambda v: jnp.asarray(np.diag(spectrum), jnp.float32) @ v, 30, jax.random.key(3), 8
  )
  assert np.all(np.isfinite(values))
  assert float(values[0]) == pytest.approx(4.0, rel=1e-4)
  assert np.all((np.asarray(values) > 1.0 - 1e-3) & (np.asarray(values) < 4.0 + 1e-3))
  np.testing.assert_allclose(np.sort(np.asarray(values))[:1], [1.0], rtol=1e-3)
  with pytest.raises(ValueError, match="num_iterations"):
    diagnostics.lanczos_eigenvalues(lambda v: v, 5, jax.random.key(0), 6)


def test_epsilon_sharpness_of_a_diagonal_quadratic_is_its_box_maximum():
  # f(w) = 0.5 sum a_i (w_i - c_i)^2 + f_min is convex and separable: the
  # maximum over the box |y_i| <= eps (|w_i| + 1) is at the vertex farther
  # from c, 0.5 sum a_i (|w_i - c_i| + r_i)^2 + f_min.
  a = jnp.array([3.0, 0.5, 10.0, 1.0])
  c = jnp.array([0.2, -1.0, 0.0, 2.0])
  w = jnp.array([0.5, -1.5, 0.1, 1.0])
  f_min = 0.25

  def loss_fn(params):
    return 0.5 * jnp.sum(a * (params["w"] - c) ** 2) + f_min

  eps = 0.05
  r = eps * (jnp.abs(w) + 1)
  f_max = 0.5 * jnp.sum(a * (jnp.abs(w - c) + r) ** 2) + f_min
  f0 = loss_fn({"w": w})
  expected = 100 * (f_max - f0) / (1 + f0)
  sharpness = jax.jit(
    functools.partial(diagnostics.epsilon_sharpness, loss_fn, epsilon=eps, num_steps=10)
  )({"w": w})
  assert float(sharpness) == pytest.approx(float(expected), rel=1e-5)
  # A random start inside the box reaches the same vertex.
  random_start = diagnostics.epsilon_sharpness(loss_fn, {"w": w}, eps, 20, jax.random.key(1))
  assert float(random_start) == pytest.approx(float(expected), rel=1e-5)
  with pytest.raises(ValueError, match="epsilon"):
    diagnostics.epsilon_sharpness(loss_fn, {"w": w}, epsilon=0.0)


# --- interpolation -------------------------------------------------------------


def test_interpolation_of_a_quadratic_is_the_known_parabola():
  theta_s = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
  theta_l = {"w": jnp.array([3.0, 1.0]), "b": jnp.array(-0.5)}

  def evaluate(params):
    flat = jnp.concatenate([params["w"], params["b"][None]])
    return {"loss": jnp.sum(flat**2)}

  alphas = np.linspace(-1, 2, 7)
  curve = diagnostics.interpolation_curve(jax.jit(evaluate), theta_s, theta_l, alphas)
  s, d = np.array([1.0, -2.0, 0.5]), np.array([2.0, 3.0, -1.0])
  expected = [np.sum((s + a * d) ** 2) for a in alphas]
  np.testing.assert_allclose(curve["loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(curve["alpha"], alphas)
  with pytest.raises(ValueError, match="tree structure"):
    diagnostics.interpolate_params(theta_s, {"w": theta_l["w"]}, 0.5)
  with pytest.raises(ValueError, match="alphas"):
    diagnostics.interpolation_curve(evaluate, theta_s, theta_l, [0.5])


def test_recomputed_batch_stats_are_the_mean_over_batches():
  batches = jax.random.normal(jax.random.key(0), (3, 8, 4))

  def stats_fn(params, x):
    h = x * params
    return {"mean": jnp.mean(h, 0), "var": jnp.var(h, 0)}

  stats = jax.jit(functools.partial(diagnostics.recompute_batch_stats, stats_fn))(2.0, batches)
  np.testing.assert_allclose(stats["mean"], jnp.mean(2 * batches, (0, 1)), rtol=1e-5, atol=1e-6)
  expected_var = jnp.mean(jnp.var(2 * batches, axis=1), axis=0)
  np.testing.assert_allclose(stats["var"], expected_var, rtol=1e-5)


# --- random-direction landscape ------------------------------------------------


def test_landscape_of_a_linear_loss_has_alpha_2_and_the_known_slope():
  # L(w) = g . (w - w0): L - L0 = z g.v; for v uniform on the unit sphere of
  # R^n, E (g.v)^2 = |g|^2 / n, so std(d) = d |g| / sqrt(n): alpha = 2.
  n = 400
  g = jax.random.normal(jax.random.key(5), (n,))
  w0 = {"w": jnp.ones(n)}

  def loss_fn(params):
    return jnp.dot(g, params["w"] - 1.0)

  landscape = functools.partial(
    diagnostics.landscape_statistics, loss_fn, num_samples=2000, max_distance=10.0, num_bins=10
  )
  stats = jax.jit(landscape)(w0, jax.random.key(0))
  assert float(stats["alpha"]) == pytest.approx(2.0, abs=0.1)
  assert float(stats["r2"]) > 0.99
  ratio = np.asarray(stats["std"]) / np.asarray(stats["centers"])
  np.testing.assert_allclose(ratio[1:], float(jnp.linalg.norm(g)) / np.sqrt(n), rtol=0.2)
  assert float(jnp.max(stats["distances"])) <= 10.0


def test_landscape_of_a_quadratic_has_alpha_4():
  # L = 0.5 (w - w0)^T A (w - w0): L - L0 = 0.5 z^2 v^T A v, std ~ d^2.
  loss_fn, params = _quadratic(np.linspace(0.5, 3.0, 60), seed=2)
  zero = jax.tree.map(jnp.zeros_like, params)

  def shifted(p):
    return loss_fn(jax.tree.map(jnp.subtract, p, zero))

  stats = diagnostics.landscape_statistics(shifted, zero, jax.random.key(1), 600, 3.0, 8)
  assert float(stats["alpha"]) == pytest.approx(4.0, abs=0.15)
  with pytest.raises(ValueError, match="max_distance"):
    diagnostics.random_direction_losses(shifted, zero, jax.random.key(1), 10, -1.0)


def test_binned_std_is_the_root_mean_square_per_bin():
  d = jnp.array([0.1, 0.2, 0.6, 0.9, 1.0])
  diff = jnp.array([1.0, -3.0, 2.0, 0.0, 4.0])
  bins = diagnostics.binned_loss_std(d, diff, num_bins=4)
  np.testing.assert_allclose(bins["count"], [2, 0, 1, 2])
  np.testing.assert_allclose(bins["std"][0], np.sqrt(5.0), rtol=1e-6)
  assert np.isnan(bins["std"][1])
  np.testing.assert_allclose(bins["std"][3], np.sqrt(8.0), rtol=1e-6)


# --- noise scale and update covariance -----------------------------------------


def _linear_regression(n=512, dim=6, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  y = (x @ rng.normal(size=dim) + rng.normal(size=n)).astype(np.float32)
  w = jnp.asarray(rng.normal(size=dim), jnp.float32)
  per_example = (x @ np.asarray(w) - y)[:, None] * x  # exact per-example gradients
  mean = per_example.mean(0)
  trace_sigma = float(np.mean(np.sum((per_example - mean) ** 2, 1)))

  def grad_fn(params, batch):
    return jax.grad(lambda p: 0.5 * jnp.mean((batch["x"] @ p - batch["y"]) ** 2))(params)

  def draw(num_batches, batch_size, key):
    index = jax.random.randint(key, (num_batches, batch_size), 0, n)
    return {"x": jnp.asarray(x)[index], "y": jnp.asarray(y)[index]}

  return w, grad_fn, draw, float(mean @ mean), trace_sigma


def test_noise_scale_formula_inverts_the_expected_squared_norms():
  g2, trace = 0.7, 12.0
  out = diagnostics.gradient_noise_scale(g2 + trace / 8, g2 + trace / 128, 8, 128)
  assert float(out["grad_sq"]) == pytest.approx(g2, rel=1e-6)
  assert float(out["trace_sigma"]) == pytest.approx(trace, rel=1e-6)
  assert float(out["b_simple"]) == pytest.approx(trace / g2, rel=1e-6)
  with pytest.raises(ValueError, match="b_small"):
    diagnostics.gradient_noise_scale(1.0, 1.0, 64, 64)


def test_measured_noise_scale_matches_the_exact_one_of_linear_regression():
  w, grad_fn, draw, g2, trace = _linear_regression()
  small = draw(4000, 4, jax.random.key(0))
  big = draw(500, 64, jax.random.key(1))
  out = jax.jit(functools.partial(diagnostics.measure_noise_scale, grad_fn))(w, small, big)
  assert float(out["trace_sigma"]) == pytest.approx(trace, rel=0.06)
  assert float(out["grad_sq"]) == pytest.approx(g2, rel=0.1)
  assert float(out["b_simple"]) == pytest.approx(trace / g2, rel=0.12)
  assert out["b_small"] == 4 and out["b_big"] == 64


def test_update_covariance_of_sgd_matches_hoffer_eq_6_and_sqrt_scaling():
  # cov(-eta g_B) = eta^2 Sigma / B for batches with replacement; LB with
  # eta * sqrt(r) (LB+LR) has the trace of SB, plain LB r times less.
  w, grad_fn, draw, _, trace = _linear_regression(seed=1)
  eta, b, r = 0.1, 8, 8

  def sgd(lr):
    def update_fn(params, batch, key):
      del key
      return jax.tree.map(lambda g: -lr * g, grad_fn(params, batch))

    return update_fn

  key = jax.random.key(2)
  sb = diagnostics.update_covariance(sgd(eta), w, draw(3000, b, key), key, num_projections=3)
  lb_lr = diagnostics.update_covariance(sgd(eta * np.sqrt(r)), w, draw(3000, b * r, key), key)
  lb = diagnostics.update_covariance(sgd(eta), w, draw(3000, b * r, key), key)
  expected = eta**2 * trace / b
  assert float(sb["trace"]) == pytest.approx(expected, rel=0.08)
  assert float(lb_lr["trace"]) == pytest.approx(expected, rel=0.08)
  assert float(lb["trace"]) == pytest.approx(expected / r, rel=0.08)
  assert sb["projected_cov"].shape == (3, 3)
  # The projected covariance of 3 orthonormal directions cannot exceed the trace.
  assert 0 < float(jnp.trace(sb["projected_cov"])) < float(sb["trace"])


# --- runs and the command line -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
  """A small-batch and a large-batch tiny run on synthetic data."""
  workdirs = {}
  for variant in ("sb", "lb"):
    workdir = str(tmp_path_factory.mktemp(variant))
    training.train_and_evaluate(tiny_config(variant, max_checkpoints_to_keep=3), workdir)
    workdirs[variant] = workdir
  return workdirs


TINY_OPTIONS = dict(
  num_batches=2,
  batch_size=16,
  top_k=2,
  lanczos_iterations=6,
  sharpness_steps=3,
  num_alphas=4,
  eval_examples=64,
  landscape_samples=40,
  landscape_bins=4,
  noise_small_batch=8,
  noise_big_batch=32,
  noise_batches=8,
)


@pytest.fixture(scope="module")
def analysis(tiny_runs):
  """experiments.analyze run once on the two tiny runs, every diagnostic."""
  from experiments import analyze

  options = analyze.Options(**TINY_OPTIONS)
  return analyze.analyze(tiny_runs["sb"], analyze.DIAGNOSTICS, tiny_runs["lb"], (), options)


@pytest.fixture(scope="module")
def sharpness_losses(tiny_runs):
  """Each run and the loss analyze's sharpness uses with TINY_OPTIONS (2 batches of 16, seed 0)."""
  out = {}
  for variant, workdir in tiny_runs.items():
    run = diagnostics.load_run(workdir)
    batches = diagnostics.sample_batches(run.dataset, 2, 16, seed=0)
    out[variant] = run, diagnostics.eval_loss_fn(run.model, run.batch_stats, batches)
  return out


def _eigsh_top(loss_fn, params, k):
  """The k largest Hessian eigenvalues by ARPACK (scipy eigsh) on jax Hessian-vector products."""
  from scipy.sparse.linalg import LinearOperator, eigsh

  flat, unravel = ravel_pytree(params)

  @jax.jit
  def matvec(v):
    return ravel_pytree(jax.jvp(jax.grad(loss_fn), (params,), (unravel(v),))[1])[0]

  operator = LinearOperator(
    (flat.size, flat.size),
    matvec=lambda v: np.asarray(matvec(jnp.asarray(v, jnp.float32)), np.float64),
    dtype=np.float64,
  )
  values = eigsh(
    operator, k, which="LA", tol=1e-8, v0=np.ones(flat.size), return_eigenvectors=False
  )
  return np.sort(values)[::-1]


@pytest.fixture(scope="module")
def eigsh_top(sharpness_losses):
  """The top 3 Hessian eigenvalues of each tiny run's sharpness loss, by scipy."""
  return {v: _eigsh_top(loss_fn, run.params, 3) for v, (run, loss_fn) in sharpness_losses.items()}


def test_analyze_writes_every_diagnostic_of_two_tiny_runs(tiny_runs, analysis):
  with open(os.path.join(tiny_runs["sb"], "analysis.json")) as f:
    assert json.load(f) == json.loads(json.dumps(analysis))
  from experiments import analyze

  for name in analyze.DIAGNOSTICS:
    assert os.path.getsize(os.path.join(tiny_runs["sb"], f"analysis_{name}.png")) > 1000
  assert [r["variant"] for r in analysis["sharpness"]["runs"]] == ["sb", "lb"]

  curve = analysis["interpolation"]["curve"]
  np.testing.assert_allclose(curve["alpha"], np.linspace(-1, 2, 4))
  for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
    assert len(curve[key]) == 4 and np.all(np.isfinite(curve[key]))

  noise = analysis["noise_scale"]
  assert [r["step"] for r in noise["per_step"]] == diagnostics.checkpoint_steps(tiny_runs["sb"])
  assert all(np.isfinite(r["b_simple"]) for r in noise["per_step"])
  sb_cov, lb_cov = noise["update_covariance"]["regimes"]
  # Same lr, 4x the batch: Hoffer eq. 6 predicts about a quarter of the trace.
  assert sb_cov["batch_size"] == 16 and lb_cov["batch_size"] == 64
  assert 0.1 < lb_cov["trace"] / sb_cov["trace"] < 0.5


def test_lanczos_on_a_run_matches_scipy_eigsh(sharpness_losses, eigsh_top):
  run, loss_fn = sharpness_losses["lb"]
  top = jax.jit(
    functools.partial(diagnostics.hessian_top_eigenvalues, loss_fn, k=3, num_iterations=20)
  )(run.params, jax.random.key(0))
  np.testing.assert_allclose(top, eigsh_top["lb"], rtol=1e-4)


def _keskar_box_bounds(loss_fn, params, epsilon, top_eigenvalue):
  """f0 and bounds on Keskar's phi (percent) in a box small enough for a quadratic model.

  Below: the loss at the vertex r * sign(g) of the box |y_i| <= r_i =
  epsilon (|x_i| + 1). Above: the linear term's box maximum sum |g_i| r_i plus
  the top curvature's 0.5 lambda_max |r|^2.
  """
  x, unravel = ravel_pytree(params)
  flat_loss = jax.jit(lambda y: loss_fn(unravel(y)))
  f0, g = jax.jit(jax.value_and_grad(flat_loss))(x)
  r = epsilon * (jnp.abs(x) + 1)
  vertex = 100 * (flat_loss(x + r * jnp.sign(g)) - f0) / (1 + f0)
  upper = 100 * (jnp.sum(jnp.abs(g) * r) + 0.5 * top_eigenvalue * jnp.sum(r**2)) / (1 + f0)
  return float(f0), float(vertex), float(upper)


def test_analyze_sharpness_against_eigsh_and_the_box_vertex(
  tiny_runs, analysis, sharpness_losses, eigsh_top
):
  for result in analysis["sharpness"]["runs"]:
    exact = eigsh_top[result["variant"]]
    ritz = np.asarray(result["top_eigenvalues"])
    # 6 Lanczos steps: by interlacing the i-th Ritz value is at most the i-th
    # eigenvalue; the top one has converged.
    assert np.all(ritz <= exact[:2] * (1 + 1e-4)), (ritz, exact)
    assert ritz[0] == pytest.approx(exact[0], rel=1e-2)

    # Keskar's box (epsilon 1e-3) is small: the loss is nearly linear in it,
    # so the maximum is near the vertex r * sign(g), and the quadratic model
    # with the top curvature bounds it above.
    run, loss_fn = sharpness_losses[result["variant"]]
    f0, vertex, upper = _keskar_box_bounds(loss_fn, run.params, 1e-3, exact[0])
    assert result["train_loss"] == pytest.approx(f0, rel=1e-6)
    assert vertex * (1 - 1e-2) <= result["epsilon_sharpness"] <= upper, (vertex, upper)
  # The library call table1 uses gives the same number on the same batches.
  top = diagnostics.top_hessian_eigenvalue_of_run(
    tiny_runs["lb"], num_batches=2, batch_size=16, num_iterations=6
  )
  assert top == pytest.approx(analysis["sharpness"]["runs"][1]["top_eigenvalues"][0], rel=1e-4)
  # A loaded run measures the same; it is measured at the step it was loaded at.
  run = diagnostics.load_run(tiny_runs["lb"])
  assert diagnostics.top_hessian_eigenvalue_of_run(
    run, num_batches=2, batch_size=16, num_iterations=6
  ) == pytest.approx(top, rel=1e-6)
  with pytest.raises(ValueError, match=f"step=1: the run given is loaded at step {run.step}"):
    diagnostics.scale_invariant_sq_norm_of_run(run, step=1)


def test_analyze_landscape_is_the_binned_log_log_fit(tiny_runs, analysis):
  landscape = analysis["landscape"]
  _, distances = diagnostics.weight_distance_series(tiny_runs["sb"])
  assert landscape["max_distance"] == pytest.approx(max(distances))
  assert sum(landscape["count"]) == 40 and len(landscape["count"]) == 4
  width = landscape["max_distance"] / 4
  # The bins split [0, max sampled distance], at most c.
  assert landscape["centers"][0] <= width / 2 * (1 + 1e-6)
  # alpha is twice the least-squares slope of log std on log d over the
  # non-empty bins but the first (numpy's polyfit, independently).
  centers = np.asarray(landscape["centers"][1:])
  std = np.asarray([np.nan if v is None else v for v in landscape["std"][1:]])
  valid = np.asarray(landscape["count"][1:]) > 0
  assert valid.sum() >= 2
  slope, intercept = np.polyfit(np.log(centers[valid]), np.log(std[valid]), 1)
  assert landscape["alpha"] == pytest.approx(2 * slope, rel=1e-4)
  assert landscape["intercept"] == pytest.approx(intercept, rel=1e-4, abs=1e-5)
  residual = np.log(std[valid]) - slope * np.log(centers[valid]) - intercept
  r2 = 1 - np.sum(residual**2) / np.sum((np.log(std[valid]) - np.log(std[valid]).mean()) ** 2)
  assert landscape["r2"] == pytest.approx(r2, rel=1e-4, abs=1e-6)


def _w0_loss(workdir):
  """The landscape's loss: statistics recomputed at w0, then frozen (as analyze does)."""
  run = diagnostics.load_run(workdir)
  batches = diagnostics.sample_batches(run.dataset, 2, 16, seed=0)
  stats = diagnostics.recompute_batch_stats(
    diagnostics.batch_stats_fn(run), run.initial_params, batches["x"]
  )
  return run, diagnostics.eval_loss_fn(run.model, stats, batches)


def test_landscape_of_a_run_near_w0_is_its_first_order_one(tiny_runs):
  # Within 0.01 of w0 the loss is linear: L - L0 = z g.v, and for v uniform on
  # the unit sphere of R^n, E (g.v)^2 = |g|^2 / n: std = d |g| / sqrt(n), alpha 2.
  run, loss_fn = _w0_loss(tiny_runs["sb"])
  loss_fn = jax.jit(loss_fn)
  stats = jax.jit(
    functools.partial(
      diagnostics.landscape_statistics, loss_fn, num_samples=1000, max_distance=1e-2, num_bins=8
    )
  )(run.initial_params, jax.random.key(0))
  g, _ = ravel_pytree(jax.grad(loss_fn)(run.initial_params))
  slope = float(jnp.linalg.norm(g)) / np.sqrt(g.size)
  count, std, centers = (np.asarray(stats[k], np.float64) for k in ("count", "std", "centers"))
  # The pooled root mean square of (L - L0) / d over the 875 samples past the
  # first bin has a relative sampling error of about 1 / sqrt(2 * 875) = 2.4 %.
  pooled = np.sqrt(np.sum(count[1:] * (std[1:] / centers[1:]) ** 2) / np.sum(count[1:]))
  assert pooled == pytest.approx(slope, rel=0.1)
  # 7 bins of ~125 samples (6 % each) over a factor 5 in d: alpha to about 0.1.
  assert float(stats["alpha"]) == pytest.approx(2.0, abs=0.3)


def test_batch_stats_fn_gives_each_layers_whole_batch_statistics(tiny_runs):
  # F1: Dense -> BN -> ReLU, twice. Layer 2's statistics depend on layer 1
  # normalized by its own batch statistics (training mode), not the running ones.
  run = diagnostics.load_run(tiny_runs["sb"])
  x = diagnostics.sample_batches(run.dataset, 1, 32, seed=0)["x"][0]
  stats = jax.jit(diagnostics.batch_stats_fn(run))(run.params, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), run.params)
  h = np.asarray(x, np.float64)
  for i in (1, 2):
    h = h @ p[f"fc{i}"]["kernel"] + p[f"fc{i}"]["bias"]
    mean, var = h.mean(0), h.var(0)
    np.testing.assert_allclose(stats[f"bn{i}"]["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[f"bn{i}"]["var"], var, rtol=1e-5)
    h = (h - mean) / np.sqrt(var + run.config.bn_epsilon) * p[f"bn{i}"]["scale"]
    h = np.maximum(h + p[f"bn{i}"]["bias"], 0.0)
  assert set(stats) == {"bn1", "bn2"}


def test_analyze_rejects_unknown_diagnostics_and_a_missing_other_run(tiny_runs):
  from experiments import analyze

  with pytest.raises(ValueError, match="valid: sharpness, interpolation"):
    analyze.parse_what("sharpness,hessian")
  with pytest.raises(ValueError, match="other_workdir"):
    analyze.analyze(tiny_runs["sb"], "interpolation")
  with pytest.raises(ValueError, match="top_k"):
    analyze.analyze(tiny_runs["sb"], "sharpness", options=analyze.Options(top_k=30))
  with pytest.raises(ValueError, match="no checkpoint at step 7"):
    diagnostics.load_run(tiny_runs["sb"], step=7)
