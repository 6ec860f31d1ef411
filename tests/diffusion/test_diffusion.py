"""brainjax.diffusion against diffusers' schedulers (the numerical reference), and its own contracts."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from brainjax.config import ConfigError
from brainjax.diffusion import noise as noise_lib
from brainjax.diffusion import sampling, schedules
from brainjax.diffusion.schedules import NoiseSchedule
from tests import parity

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json, verbatim.
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# ModelScope / Zeroscope text-to-video scheduler config (a DDIMScheduler one).
ZEROSCOPE_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.15.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None,
}


def fake_model_np(x: np.ndarray, t: int) -> np.ndarray:
  """A fixed deterministic 'model': elementwise, mixes the sample and the timestep."""
  return np.tanh(0.7 * x + 0.3 * t / 1000.0 - 0.1).astype(np.float32)


def fake_denoise(x, t, cond):
  """fake_model_np in jnp, plus a per-sample shift from the condition (cond [B, D])."""
  shift = 0.0 if cond is None else cond.mean(axis=-1).reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.tanh(0.7 * x + 0.3 * t / 1000.0 - 0.1 + shift)


def _row(plan, i):
  return jax.tree.map(lambda a: a[i], plan)


def _normal(seed, shape):
  """Test data from numpy (compiling jax.random for every shape would dominate the file's run time)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


# The pure steps, jitted once per shape: the Python loops below call them like the scan does.
ddim_step = jax.jit(sampling.ddim_step, static_argnames="eta")
dpm_solver_step = jax.jit(sampling.dpm_solver_step)


# ---------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("beta_schedule,beta_start,beta_end", [
    ("scaled_linear", 0.00085, 0.012), ("linear", 0.0001, 0.02), ("squaredcos_cap_v2", 0.0001, 0.02)])
@pytest.mark.parametrize("num_train_timesteps", [1000, 37])
def test_betas_bit_identical_to_diffusers(beta_schedule, beta_start, beta_end, num_train_timesteps):
  ours = NoiseSchedule.create(num_train_timesteps, beta_start, beta_end, beta_schedule)
  ref = DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                      beta_schedule=beta_schedule)
  np.testing.assert_array_equal(np.asarray(ours.betas), ref.betas.numpy())
  np.testing.assert_array_equal(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy())
  assert ours.num_train_timesteps == num_train_timesteps


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_zero_terminal_snr_betas_match_diffusers(beta_schedule):
  kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule=beta_schedule, prediction_type="v_prediction",
            rescale_betas_zero_snr=True)
  ours = NoiseSchedule.create(**kw)
  ref = DDIMScheduler(**kw)
  # torch's float32 sqrt is not correctly rounded (numpy's is), so the rescaled alpha-bars agree to a few
  # ulps, and the betas, 1 - a ratio of neighbouring alpha-bars, to a few 1e-6 absolute.
  np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), rtol=1e-5, atol=1e-12)
  np.testing.assert_allclose(np.asarray(ours.betas), ref.betas.numpy(), rtol=0, atol=5e-6)
  assert float(ours.alphas_cumprod[-1]) == 0.0 and float(ours.betas[-1]) == 1.0  # zero SNR at t = T - 1
  # the first noise level is the unrescaled schedule's
  plain = NoiseSchedule.create(beta_start=0.00085, beta_end=0.012, beta_schedule=beta_schedule)
  np.testing.assert_allclose(float(ours.alphas_cumprod[0]), float(plain.alphas_cumprod[0]), rtol=1e-6)


def test_zero_terminal_snr_noises_the_last_step_completely():
  schedule = NoiseSchedule.create(**SD_BETAS, prediction_type="v_prediction", rescale_betas_zero_snr=True)
  x0, noise = _normal(0, (2, 3, 4, 4, 4)), _normal(1, (2, 3, 4, 4, 4))
  parity.assert_close(schedules.add_noise(schedule, x0, noise, 999), noise, rtol=1e-5, atol=1e-6)
  # v at T - 1 is -x0: the model must produce the clean latents from noise and the condition alone
  parity.assert_close(schedules.velocity(schedule, x0, noise, 999), -x0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_inference_timesteps_match_set_timesteps(spacing, steps_offset):
  schedule = NoiseSchedule.create(**SD_BETAS, timestep_spacing=spacing, steps_offset=steps_offset)
  ddim = DDIMScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=steps_offset)
  dpm = DPMSolverMultistepScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=steps_offset)
  for n in (1, 3, 7, 10, 20, 25, 50, 200, 999):
    for sampler, ref in (("ddim", ddim), ("dpm++2m", dpm)):
      ref.set_timesteps(n)
      expected = ref.timesteps.numpy()
      if expected.max() >= 1000:  # diffusers would feed the model t = 1000; brainjax refuses
        with pytest.raises(ConfigError, match="not strictly decreasing"):
          sampling.inference_timesteps(schedule, n, sampler)
        continue
      np.testing.assert_array_equal(sampling.inference_timesteps(schedule, n, sampler), expected,
                                    err_msg=f"{sampler} n={n}")


def test_forward_process_matches_diffusers():
  schedule = NoiseSchedule.create(**SD_BETAS)
  ref = DDIMScheduler(**SD_BETAS)
  rng = np.random.default_rng(0)
  x0 = rng.standard_normal((3, 2, 5, 5, 4)).astype(np.float32)  # [B, T, H, W, C] video latents
  noise = rng.standard_normal(x0.shape).astype(np.float32)
  t = np.array([0, 517, 999])
  tx, tn, tt = torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)
  parity.assert_close(schedules.add_noise(schedule, x0, noise, t), ref.add_noise(tx, tn, tt).numpy(), rtol=1e-6,
                      atol=1e-6)
  parity.assert_close(schedules.velocity(schedule, x0, noise, t), ref.get_velocity(tx, tn, tt).numpy(), rtol=1e-6,
                      atol=1e-6)
  # a scalar t applies to the whole batch
  parity.assert_close(schedules.add_noise(schedule, x0, noise, 517),
                      ref.add_noise(tx, tn, torch.full((3,), 517)).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_targets_and_conversions_are_consistent(prediction_type):
  schedule = NoiseSchedule.create(prediction_type=prediction_type)
  x0, noise = _normal(0, (4, 3, 3, 2)), _normal(1, (4, 3, 3, 2))
  t = jnp.array([3, 250, 600, 980])
  xt = schedules.add_noise(schedule, x0, noise, t)
  target = schedules.training_target(schedule, x0, noise, t)
  parity.assert_close(schedules.pred_x0(schedule, target, xt, t), x0, rtol=1e-4, atol=2e-4)
  parity.assert_close(schedules.pred_eps(schedule, target, xt, t), noise, rtol=1e-4, atol=2e-4)


def test_diffusion_loss_with_pluggable_noise():
  schedule = NoiseSchedule.create(prediction_type="v_prediction")
  x0 = _normal(1, (8, 6, 4, 4, 4))
  noise_fn = noise_lib.dependent_noise_fn(0.25)

  @jax.jit
  def losses(rng, t):
    noise = noise_fn(jax.random.split(rng)[1], x0.shape, x0.dtype)  # rng -> (t_rng, noise_rng), as documented

    def oracle(noisy, tt, cond):  # recovers the exact target, so the loss is 0
      assert tt.shape == (8,) and cond == "c"
      return schedules.training_target(schedule, x0, noise, tt)

    exact = schedules.diffusion_loss(schedule, oracle, x0, "c", rng, noise_fn=noise_fn)
    zero = schedules.diffusion_loss(schedule, lambda x, tt, c: jnp.zeros_like(x), x0, "c", rng, noise_fn=noise_fn, t=t)
    return exact, zero, jnp.mean(schedules.training_target(schedule, x0, noise, t) ** 2)

  exact, zero, expected = losses(jax.random.key(2), jnp.arange(8, dtype=jnp.int32) * 120)
  assert float(exact) == 0.0
  parity.assert_close(zero, expected, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="predict_fn returned shape"):
    schedules.diffusion_loss(schedule, lambda x, t, c: x[:, 0], x0, None, jax.random.key(0))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_loss_matches_diffusers_training_script(prediction_type):
  """diffusers' train_text_to_image --snr_gamma: per-sample MSE x min(SNR, γ) / (SNR | SNR + 1 | 1)."""
  from diffusers.training_utils import compute_snr
  schedule = NoiseSchedule.create(**SD_BETAS, prediction_type=prediction_type)
  ref = DDIMScheduler(**SD_BETAS, prediction_type=prediction_type)
  x0, prediction = _normal(3, (5, 2, 4, 4, 4)), _normal(4, (5, 2, 4, 4, 4))
  t = jnp.array([0, 10, 250, 700, 999], jnp.int32)
  rng, gamma = jax.random.key(5), 5.0
  loss = schedules.diffusion_loss(schedule, lambda x, tt, c: prediction, x0, None, rng, t=t, snr_gamma=gamma)

  noise = noise_lib.gaussian_noise(jax.random.split(rng)[1], x0.shape, x0.dtype)
  target = torch.from_numpy(np.array(schedules.training_target(schedule, x0, noise, t)))
  tt = torch.from_numpy(np.asarray(t)).long()
  snr = compute_snr(ref, tt)
  weights = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
  if prediction_type == "epsilon":
    weights = weights / snr
  elif prediction_type == "v_prediction":
    weights = weights / (snr + 1)
  per_sample = torch.nn.functional.mse_loss(torch.from_numpy(np.array(prediction)), target, reduction="none")
  expected = (per_sample.mean(dim=list(range(1, per_sample.ndim))) * weights).mean()
  parity.assert_close(loss, expected.numpy(), rtol=1e-5, atol=1e-6)
  # gamma 0 is the plain loss; a negative gamma is an error
  plain = schedules.diffusion_loss(schedule, lambda x, tt, c: prediction, x0, None, rng, t=t)
  parity.assert_close(plain, torch.nn.functional.mse_loss(torch.from_numpy(np.array(prediction)), target).numpy(),
                      rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="snr_gamma"):
    schedules.diffusion_loss(schedule, lambda x, tt, c: prediction, x0, None, rng, t=t, snr_gamma=-1.0)


# ---------------------------------------------------------------------------------------------- dependent noise


def test_dependent_noise_variance_and_correlation():
  b, f, d = 4000, 6, 8  # samples, frames, elements per frame
  n = b * d  # independent groups of f correlated frames
  for beta in (0.0, 0.25, 0.7):
    eps = np.asarray(noise_lib.dependent_noise(jax.random.key(3), (b, f, d), beta, frame_axis=1))
    inflation = 1 + (f - 1) * beta ** 2  # variance inflation of a mean over one group's correlated frames
    # 6 standard errors: Var(x^2) = 2 and Cov(x_j^2, x_k^2) = 2 beta^2 within a group
    assert abs(eps.var() - 1.0) < 6.0 * math.sqrt(2.0 * inflation / (f * n)), (beta, eps.var())
    corr = np.corrcoef(eps.transpose(1, 0, 2).reshape(f, n))
    off = corr[~np.eye(f, dtype=bool)]
    assert np.all(np.abs(off - beta) < 6.0 / math.sqrt(n)), (beta, off.min(), off.max())  # se <= 1/sqrt(n)
    # different samples stay independent
    across = np.corrcoef(eps[0::2].reshape(-1), eps[1::2].reshape(-1))[0, 1]
    assert abs(across) < 6.0 * math.sqrt(inflation / (n / 2 * f)), (beta, across)
  one = np.asarray(noise_lib.dependent_noise(jax.random.key(4), (2, 3, 5), 1.0))
  np.testing.assert_allclose(one[:, 0], one[:, 2], rtol=1e-6)


def test_dependent_noise_rejects_beta_outside_unit_interval():
  for beta in (-0.1, 1.5):
    with pytest.raises(ConfigError, match="beta"):
      noise_lib.dependent_noise(jax.random.key(0), (2, 3, 4), beta)
    with pytest.raises(ConfigError, match="beta"):
      noise_lib.dependent_noise_fn(beta)


# ---------------------------------------------------------------------------------------------- step parity


def _ddim_trajectory(schedule, ref, num_steps, eta):
  """Runs our ddim_step and diffusers' DDIMScheduler.step side by side; checks every step."""
  ref.set_timesteps(num_steps)
  plan = sampling.make_plan(schedule, num_steps, "ddim")
  np.testing.assert_array_equal(np.asarray(plan.timestep), ref.timesteps.numpy())
  x_ref = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 4, 6, 6)).astype(np.float32))
  x = jnp.asarray(x_ref.numpy())
  for i in range(len(plan.timestep)):
    t = int(plan.timestep[i])
    noise = np.asarray(_normal(100 + i, x.shape))
    kwargs = dict(eta=eta, variance_noise=torch.from_numpy(noise)) if eta > 0 else {}
    out = ref.step(torch.from_numpy(fake_model_np(x_ref.numpy(), t)), t, x_ref, **kwargs)
    x, x0 = ddim_step(schedule, jnp.asarray(fake_model_np(np.asarray(x), t)), x, _row(plan, i), eta=eta,
                      noise=jnp.asarray(noise) if eta > 0 else None)
    x_ref = out.prev_sample
    parity.assert_close(x, x_ref.numpy(), rtol=1e-5, atol=1e-6)
    parity.assert_close(x0, out.pred_original_sample.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("prediction_type,spacing,steps_offset,set_alpha_to_one", [
    ("epsilon", "leading", 1, False),    # Stable Diffusion 1.5 / Zeroscope
    ("v_prediction", "trailing", 0, True),
    ("epsilon", "linspace", 0, True),    # DDIM's t - T // n step quirk
])
def test_ddim_matches_diffusers_step_by_step(eta, prediction_type, spacing, steps_offset, set_alpha_to_one):
  kw = dict(prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=steps_offset,
            set_alpha_to_one=set_alpha_to_one)
  schedule = NoiseSchedule.create(**SD_BETAS, **kw)
  ref = DDIMScheduler(**SD_BETAS, **kw, clip_sample=False)
  _ddim_trajectory(schedule, ref, 10, eta)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_zero_terminal_snr_matches_diffusers(eta):
  kw = dict(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True)
  _ddim_trajectory(NoiseSchedule.create(**SD_BETAS, **kw), DDIMScheduler(**SD_BETAS, **kw, clip_sample=False), 10,
                   eta)


@pytest.mark.parametrize("num_steps", [25, 50, 100])
def test_ddim_full_variance_from_zero_terminal_snr_stays_finite(num_steps):
  # eta = 1 from alpha-bar 0: the direction coefficient sqrt(1 - ab_prev - std^2) is exactly 0 but rounds below 0
  # at some step counts (diffusers' DDIMScheduler returns NaN at 25 and 100 trailing steps).
  schedule = NoiseSchedule.create(**SD_BETAS, prediction_type="v_prediction", timestep_spacing="trailing",
                                  rescale_betas_zero_snr=True)
  x = _normal(3, (2, 4, 6, 6))
  out = sampling.sample(fake_denoise, schedule, x, _normal(4, (2, 5)), sampler="ddim", num_steps=num_steps,
                        eta=1.0, rng=jax.random.key(0))
  assert np.isfinite(np.asarray(out)).all()
  step = _row(sampling.make_plan(schedule, num_steps, "ddim"), 0)
  prev, _ = ddim_step(schedule, jnp.zeros_like(x), x, step, eta=1.0, noise=jnp.zeros_like(x))
  # With a zero v-prediction, x0 = 0 at alpha-bar 0 and the step's deterministic part, sqrt(~0) * x, is ~0.
  np.testing.assert_allclose(np.asarray(prev), 0.0, atol=1e-3 * float(jnp.abs(x).max()))


def test_ddim_clip_sample_matches_diffusers():
  kw = dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=True, clip_sample_range=0.5)
  _ddim_trajectory(NoiseSchedule.create(**kw), DDIMScheduler(**kw), 10, 0.0)


@pytest.mark.parametrize("prediction_type,zero_snr", [("epsilon", False), ("v_prediction", False),
                                                     ("v_prediction", True)])
@pytest.mark.parametrize("num_steps,spacing", [(25, None), (10, "trailing")])
def test_dpm_solver_matches_diffusers_step_by_step(prediction_type, zero_snr, num_steps, spacing):
  kw = dict(prediction_type=prediction_type, steps_offset=1, rescale_betas_zero_snr=zero_snr)
  schedule = NoiseSchedule.create(**SD_BETAS, **kw, timestep_spacing=spacing)
  ref = DPMSolverMultistepScheduler(**SD_BETAS, **kw, **({} if spacing is None else dict(timestep_spacing=spacing)))
  ref.set_timesteps(num_steps)
  plan = sampling.make_plan(schedule, num_steps, "dpm++2m")
  np.testing.assert_array_equal(np.asarray(plan.timestep), ref.timesteps.numpy())
  orders = np.asarray(plan.second_order)
  assert not orders[0] and not orders[-1] and orders[1:-1].all()
  x_ref = torch.from_numpy(np.random.default_rng(6).standard_normal((2, 3, 4, 5, 5)).astype(np.float32))
  x = jnp.asarray(x_ref.numpy())
  prev_x0 = jnp.zeros_like(x)
  for i in range(len(plan.timestep)):
    t = int(plan.timestep[i])
    x_ref = ref.step(torch.from_numpy(fake_model_np(x_ref.numpy(), t)), t, x_ref).prev_sample
    x, prev_x0 = dpm_solver_step(schedule, jnp.asarray(fake_model_np(np.asarray(x), t)), x, prev_x0,
                                 _row(plan, i))
    parity.assert_close(x, x_ref.numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- samplers


_jit_fake_denoise = jax.jit(fake_denoise)
_step_noise = jax.jit(lambda rng, i, x: noise_lib.gaussian_noise(jax.random.fold_in(rng, i), x.shape, x.dtype))


def _loop(schedule, x, cond, sampler, num_steps, eta=0.0, rng=None, start=0):
  """The reference: a Python loop over the pure step functions."""
  plan = sampling.make_plan(schedule, num_steps, sampler, start)
  prev_x0 = jnp.zeros_like(x)
  for j in range(plan.timestep.shape[0]):
    step = _row(plan, j)
    out = _jit_fake_denoise(x, step.timestep, cond)
    if sampler == "ddim":
      noise = _step_noise(rng, start + j, x) if eta > 0 else None
      x, _ = ddim_step(schedule, out, x, step, eta=eta, noise=noise)
    else:
      x, prev_x0 = dpm_solver_step(schedule, out, x, prev_x0, step)
  return x


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.3), ("dpm++2m", 0.0)])
def test_scan_sampler_equals_loop_of_steps_and_jits(sampler, eta):
  schedule = NoiseSchedule.create(**SD_BETAS, steps_offset=1, set_alpha_to_one=False)
  x = _normal(7, (2, 3, 4, 4, 4))  # video latents
  cond = _normal(8, (2, 5))
  rng = jax.random.key(9)
  expected = _loop(schedule, x, cond, sampler, 12, eta, rng)
  eager = sampling.sample(fake_denoise, schedule, x, cond, sampler=sampler, num_steps=12, eta=eta, rng=rng)
  parity.assert_close(eager, expected, rtol=1e-5, atol=1e-6)
  jitted = jax.jit(lambda s, z, c, r: sampling.sample(fake_denoise, s, z, c, sampler=sampler, num_steps=12, eta=eta,
                                                      rng=r))
  # the schedule itself is a (traced) jit argument
  parity.assert_close(jitted(schedule, x, cond, rng), expected, rtol=1e-5, atol=1e-6)


def _recording(calls):
  """fake_denoise that records each call's batch (at trace time) and each executed timestep (at run time)."""
  def fn(x, t, cond):
    calls["shapes"].append((x.shape, jax.tree.map(jnp.shape, cond)))
    jax.debug.callback(lambda tt: calls["t"].append(int(tt)), t, ordered=True)
    return fake_denoise(x, t, cond)
  return fn


def test_guidance_one_call_over_doubled_batch():
  schedule = NoiseSchedule.create(**SD_BETAS)
  x = _normal(10, (3, 4, 4, 2))
  pos, neg = _normal(11, (3, 6)), _normal(12, (3, 6))
  t = jnp.int32(500)
  calls = {"shapes": [], "t": []}
  guided = sampling.classifier_free_guidance(_recording(calls), 7.5, neg)
  out = guided(x, t, pos)
  jax.effects_barrier()
  assert calls["shapes"] == [((6, 4, 4, 2), (6, 6))] and calls["t"] == [500]
  n, p = fake_denoise(x, t, neg), fake_denoise(x, t, pos)
  parity.assert_close(out, n + 7.5 * (p - n), rtol=1e-6, atol=1e-6)
  # negative == positive gives the unguided prediction at any scale
  parity.assert_close(sampling.classifier_free_guidance(fake_denoise, 12.5, pos)(x, t, pos), p, rtol=1e-6, atol=1e-6)
  # guidance scale 1 / None: one unguided call per step over the plain batch
  for scale in (None, 1.0):
    calls = {"shapes": [], "t": []}
    sampling.sample(_recording(calls), schedule, x, pos, num_steps=3, guidance_scale=scale, negative_cond=neg)
    jax.effects_barrier()
    assert [s for s, _ in calls["shapes"]] == [(3, 4, 4, 2)] and len(calls["t"]) == 3
  # a guided sampler equals the unguided sampler on the guided prediction
  guided_run = sampling.sample(fake_denoise, schedule, x, pos, num_steps=4, guidance_scale=3.0, negative_cond=neg)
  manual = sampling.sample(sampling.classifier_free_guidance(fake_denoise, 3.0, neg), schedule, x, pos, num_steps=4)
  parity.assert_close(guided_run, manual, rtol=1e-6, atol=1e-6)


def test_adversarial_negative_broadcast():
  cond = {"tokens": jnp.ones((4, 77, 8)), "pooled": jnp.ones((4, 8))}
  mean_fmri_embedding = {"tokens": jnp.full((77, 8), 2.0), "pooled": jnp.full((1, 8), 3.0)}
  neg = sampling.negative_condition(mean_fmri_embedding, cond)
  assert neg["tokens"].shape == (4, 77, 8) and neg["pooled"].shape == (4, 8)
  assert float(neg["tokens"][3, 5, 1]) == 2.0 and float(neg["pooled"][2, 0]) == 3.0
  with pytest.raises(ValueError, match="does not broadcast"):
    sampling.negative_condition({"tokens": jnp.ones((76, 8)), "pooled": jnp.ones((8,))}, cond)
  with pytest.raises(ValueError, match="structure"):
    sampling.negative_condition({"tokens": jnp.ones((77, 8))}, cond)


def test_guidance_shape_mismatch_and_missing_negative():
  schedule = NoiseSchedule.create()
  x = jnp.zeros((2, 4, 4, 1))
  pos = jnp.ones((2, 5))
  with pytest.raises(ValueError, match="negative_cond shapes"):
    sampling.sample(fake_denoise, schedule, x, pos, num_steps=2, guidance_scale=5.0, negative_cond=jnp.ones((1, 5)))
  with pytest.raises(ValueError, match="structure"):
    sampling.sample(fake_denoise, schedule, x, pos, num_steps=2, guidance_scale=5.0,
                    negative_cond=(jnp.ones((2, 5)),))
  with pytest.raises(ConfigError, match="needs negative_cond"):
    sampling.sample(fake_denoise, schedule, x, pos, num_steps=2, guidance_scale=5.0)


# ---------------------------------------------------------------------------------------------- video-to-video


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_video_to_video(sampler):
  schedule = NoiseSchedule.from_config(ZEROSCOPE_SCHEDULER_CONFIG)
  latents = _normal(13, (1, 3, 4, 4, 4))
  cond = jnp.ones((1, 3))
  noise = noise_lib.dependent_noise(jax.random.key(14), latents.shape, 0.25)
  kw = dict(sampler=sampler, num_steps=20, noise=noise)

  calls = {"shapes": [], "t": []}
  same = sampling.video_to_video(_recording(calls), schedule, latents, cond, 0.0, **kw)
  assert same is latents and not calls["shapes"]

  full = sampling.video_to_video(fake_denoise, schedule, latents, cond, 1.0, **kw)
  parity.assert_close(full, sampling.sample(fake_denoise, schedule, noise, cond, sampler=sampler, num_steps=20),
                      rtol=1e-6, atol=1e-6)

  calls = {"shapes": [], "t": []}
  out = sampling.video_to_video(_recording(calls), schedule, latents, cond, 0.8, **kw)
  jax.effects_barrier()
  timesteps = sampling.inference_timesteps(schedule, 20, sampler)
  assert calls["t"] == timesteps[4:].tolist()  # init = int(20 * 0.8) = 16 steps from row 4
  if sampler == "dpm++2m":  # Brain Netflix: Zeroscope's DDIM config under DPM-Solver, 16 steps from t = 799
    assert calls["t"][0] == 799 and len(calls["t"]) == 16
  start = sampling.video_to_video_start(20, 0.8)
  expected = _loop(schedule, schedules.add_noise(schedule, latents, noise, int(timesteps[start])), cond, sampler, 20,
                   start=start)
  parity.assert_close(out, expected, rtol=1e-5, atol=1e-6)
  # a drawn noise: noise_fn with the first half of rng.split
  rng = jax.random.key(15)
  drawn = sampling.video_to_video(fake_denoise, schedule, latents, cond, 1.0, rng, sampler=sampler, num_steps=20,
                                  noise_fn=noise_lib.dependent_noise_fn(0.25))
  noise2 = noise_lib.dependent_noise(jax.random.split(rng)[0], latents.shape, 0.25)
  parity.assert_close(drawn, sampling.sample(fake_denoise, schedule, noise2, cond, sampler=sampler, num_steps=20),
                      rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- validation


def test_sampler_argument_errors():
  schedule = NoiseSchedule.create(num_train_timesteps=100)
  x, cond = jnp.zeros((1, 2, 2, 1)), None
  with pytest.raises(ConfigError, match="num_steps = 101 exceeds"):
    sampling.sample(fake_denoise, schedule, x, cond, num_steps=101)
  with pytest.raises(ConfigError, match="num_steps = 0"):
    sampling.sample(fake_denoise, schedule, x, cond, num_steps=0)
  with pytest.raises(ConfigError, match="eta = -0.1"):
    sampling.sample(fake_denoise, schedule, x, cond, num_steps=5, eta=-0.1)
  with pytest.raises(ConfigError, match="pass rng"):
    sampling.sample(fake_denoise, schedule, x, cond, num_steps=5, eta=0.5)
  with pytest.raises(ConfigError, match="eta is DDIM's"):
    sampling.sample(fake_denoise, schedule, x, cond, sampler="dpm++2m", num_steps=5, eta=0.5, rng=jax.random.key(0))
  with pytest.raises(ConfigError, match="sampler = 'euler'"):
    sampling.sample(fake_denoise, schedule, x, cond, sampler="euler", num_steps=5)
  for strength in (-0.1, 1.2):
    with pytest.raises(ConfigError, match="strength"):
      sampling.video_to_video(fake_denoise, schedule, x, cond, strength, jax.random.key(0), num_steps=5)
  with pytest.raises(ConfigError, match="needs rng"):
    sampling.video_to_video(fake_denoise, schedule, x, cond, 0.5, num_steps=5)
  with pytest.raises(ValueError, match="denoise_fn returned shape"):
    sampling.sample(lambda z, t, c: z[..., :0], schedule, x, cond, num_steps=2)
  # 'leading' with steps_offset 1 at num_steps == T would step past the last training timestep
  with pytest.raises(ConfigError, match="not strictly decreasing"):
    sampling.inference_timesteps(NoiseSchedule.create(num_train_timesteps=100, steps_offset=1), 100, "ddim")


def test_schedule_argument_errors():
  with pytest.raises(ConfigError, match="beta_schedule = 'cubic'"):
    NoiseSchedule.create(beta_schedule="cubic")
  with pytest.raises(ConfigError, match="prediction_type = 'flow'"):
    NoiseSchedule.create(prediction_type="flow")
  with pytest.raises(ConfigError, match="timestep_spacing = 'even'"):
    NoiseSchedule.create(timestep_spacing="even")
  with pytest.raises(ConfigError, match="rescale_betas_zero_snr = True with prediction_type = 'epsilon'"):
    NoiseSchedule.create(rescale_betas_zero_snr=True)
  with pytest.raises(ConfigError, match="trained_betas has shape"):
    NoiseSchedule.create(num_train_timesteps=10, trained_betas=[0.1] * 9)


# ---------------------------------------------------------------------------------------------- load_schedule


def _write(path, config):
  path.mkdir(parents=True, exist_ok=True)
  (path / "scheduler_config.json").write_text(json.dumps(config))
  return path


def test_load_sd15_schedule_drives_ddim_and_dpm_like_diffusers(tmp_path):
  pipeline = tmp_path / "stable-diffusion-v1-5"
  _write(pipeline / "scheduler", SD15_SCHEDULER_CONFIG)
  (pipeline / "model_index.json").write_text("{}")
  for path in (pipeline, pipeline / "scheduler", pipeline / "scheduler" / "scheduler_config.json"):
    schedule = schedules.load_schedule(path)
    assert (schedule.steps_offset, schedule.set_alpha_to_one, schedule.clip_sample) == (1, False, False)
    assert schedule.timestep_spacing is None  # absent from the file: each sampler's diffusers default
  ddim = DDIMScheduler.from_pretrained(str(pipeline), subfolder="scheduler")
  dpm = DPMSolverMultistepScheduler.from_pretrained(str(pipeline), subfolder="scheduler")
  np.testing.assert_array_equal(np.asarray(schedule.alphas_cumprod), ddim.alphas_cumprod.numpy())
  ddim.set_timesteps(50)
  dpm.set_timesteps(50)
  np.testing.assert_array_equal(sampling.inference_timesteps(schedule, 50, "ddim"), ddim.timesteps.numpy())
  np.testing.assert_array_equal(sampling.inference_timesteps(schedule, 50, "dpm++2m"), dpm.timesteps.numpy())
  assert ddim.timesteps[0] == 981 and dpm.timesteps[0] == 999  # 'leading' + 1 vs 'linspace'
  _ddim_trajectory(schedule, ddim, 10, 0.0)


def test_load_schedule_from_gcs(fake_gcs):
  import os
  os.makedirs(os.path.join(fake_gcs, "bucket", "zeroscope", "scheduler"))
  with open(os.path.join(fake_gcs, "bucket", "zeroscope", "scheduler", "scheduler_config.json"), "w") as f:
    json.dump(ZEROSCOPE_SCHEDULER_CONFIG, f)
  schedule = schedules.load_schedule("gs://bucket/zeroscope")
  assert schedule.prediction_type == "epsilon" and schedule.steps_offset == 1


@pytest.mark.parametrize("change,message", [
    ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "FlowMatchEulerDiscreteScheduler"),
    ({"_class_name": "LCMScheduler"}, "LCMScheduler"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr = True with prediction_type = 'epsilon'"),
    ({"thresholding": True}, "thresholding = True"),
    ({"use_karras_sigmas": True}, "use_karras_sigmas = True"),
    ({"final_sigmas_type": "sigma_min"}, "final_sigmas_type = 'sigma_min'"),
    ({"variance_type": "learned_range"}, "variance_type = 'learned_range'"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule = 'sigmoid'"),
    ({"prediction_type": "flow_prediction"}, "prediction_type = 'flow_prediction'"),
    ({"timestep_spacing": "even"}, "timestep_spacing = 'even'"),
    ({"my_new_option": 3}, r"unknown scheduler option\(s\) \['my_new_option'\]"),
])
def test_load_schedule_rejects_unsupported_configs(tmp_path, change, message):
  directory = _write(tmp_path / "scheduler", {**SD15_SCHEDULER_CONFIG, **change})
  with pytest.raises(ConfigError, match=message) as info:
    schedules.load_schedule(directory)
  assert "scheduler_config.json" in str(info.value)  # the message names the file


def test_load_schedule_missing_or_broken_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="no scheduler config"):
    schedules.load_schedule(tmp_path / "nowhere")
  (tmp_path / "scheduler_config.json").write_text("{not json")
  with pytest.raises(ConfigError, match="not valid JSON"):
    schedules.load_schedule(tmp_path)


def test_load_schedule_defaults_and_ignored_solver_keys(tmp_path):
  # A DPM-Solver config: its solver keys are ignored; absent keys take DDIMScheduler's defaults.
  config = {"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3, "algorithm_type": "dpmsolver++",
            "lambda_min_clipped": -math.inf, "prediction_type": "v_prediction"}
  schedule = schedules.load_schedule(_write(tmp_path / "scheduler", config))
  ref = DDIMScheduler.from_config(config)
  np.testing.assert_array_equal(np.asarray(schedule.alphas_cumprod), ref.alphas_cumprod.numpy())
  assert schedule.prediction_type == "v_prediction" and schedule.clip_sample and schedule.set_alpha_to_one
