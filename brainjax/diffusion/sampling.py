r"""Samplers: DDIM and DPM-Solver++(2M) as pure steps and as one jitted `lax.scan`; guidance; video-to-video.

diffusers' DDIMScheduler and DPMSolverMultistepScheduler (with its defaults:
algorithm_type 'dpmsolver++', solver_order 2, solver_type 'midpoint',
lower_order_final, final_sigmas_type 'zero') are the numerical reference,
step by step; timesteps are chosen exactly as their `set_timesteps`.

  denoise_fn(latents, t, cond) -> model output (noise, v or x0, per schedule.prediction_type)
      latents are [N, H, W, C] image or [B, T, H, W, C] video latents (any shape with a batch axis);
      t is an int32 scalar, the same timestep for the whole batch; cond is any pytree whose leaves have
      the batch axis first (or None).

  sample(denoise_fn, schedule, initial_latents, cond, *, sampler='ddim', num_steps=50, eta=0.0,
         guidance_scale=None, negative_cond=None, rng=None, noise_fn=None) -> latents
      text-to-image / text-to-video: every step in one lax.scan with the model call inside, so the
      whole sampler jits into one program (wrap it in jax.jit with denoise_fn closed over).
  video_to_video(denoise_fn, schedule, latents, cond, strength, rng=None, *, sampler, num_steps,
                 eta, guidance_scale, negative_cond, noise=None, noise_fn=None) -> latents
      Brain Netflix's renoising of a regressed latent (strength 0.8 on Zeroscope): diffusers'
      img2img convention, see below.
  classifier_free_guidance(denoise_fn, guidance_scale, negative_cond) -> denoise_fn
      pred = neg + s (pos - neg) from ONE model call on the batch [negative; positive].
  negative_condition(negative, cond)   a negative condition broadcast to cond's batch.

  inference_timesteps(schedule, num_steps, sampler) -> int64 numpy [n]   diffusers' set_timesteps
  make_plan(schedule, num_steps, sampler, start=0) -> DDIMStep | DPMSolverStep  per-step rows [n]
  ddim_step(schedule, model_output, sample, step, *, eta=0.0, noise=None) -> (prev_sample, pred_x0)
  dpm_solver_step(schedule, model_output, sample, prev_x0, step) -> (prev_sample, x0)
      the pure steps; `sample` is a scan of exactly these over the plan's rows.

Guidance. Classifier-free guidance with an arbitrary negative condition:
pred = neg + s (pos - neg), the model run once on the concatenated batch
[neg; pos] (diffusers' order: [uncond; text]). With the empty prompt's embedding
as the negative this is ordinary CFG (SD uses s = 7.5). MinD-Video's
*adversarial guidance* is exactly this with the negative set to the fMRI
encoder's output for the mean test fMRI (scale 12.5): build it with
`negative_condition(encoder(mean_test_fmri[None]), cond)`. guidance_scale None
or 1 means one unguided call (negative_cond unused); any other scale, also
below 1, is guided (diffusers guides only when the scale is > 1).

Video-to-video (diffusers' img2img / VideoToVideoSDPipeline `get_timesteps`):
init = min(int(num_steps * strength), num_steps) steps are run, starting at
plan row t_start = num_steps - init from add_noise(latents, noise, t_{t_start}).
strength 0 (or any strength with init = 0) returns `latents` unchanged without a
model call. strength 1 is defined as text-to-video from `noise`: the input is
ignored and the initial latents are the noise itself, so
video_to_video(strength=1) == sample(initial_latents=noise). diffusers instead
still adds sqrt(alpha-bar) of the input at the first timestep, which is not
negligible with SD's betas: 0.068 at t = 999, 0.076 at t = 981 (the first
'leading' timestep with steps_offset 1 at 50 steps). The noise may be dependent
noise (pass `noise` or a `noise_fn`, e.g. noise.dependent_noise_fn(0.25)).

diffusers behaviours reproduced on purpose (they decide what a pretrained model's
samples look like):
  * DDIM's step goes from t to t - T // num_steps whatever the spacing, so with 'linspace' (and with
    'trailing' when num_steps does not divide T) the step lands on an alpha-bar that is not the next
    timestep's; below 0 it uses the final alpha-bar (1, or alphas_cumprod[0] without set_alpha_to_one).
  * DPM-Solver's 'linspace' and 'leading' grids use num_steps + 1 points and drop the last, so DDIM
    and DPM-Solver differ for the same spacing; 'linspace' and 'trailing' ignore steps_offset.
  * A config without timestep_spacing gets the sampler class's default: SD 1.5's file samples
    'leading' under DDIM and 'linspace' under DPM-Solver (schedule.timestep_spacing None).
  * DPM-Solver++(2M) takes a first-order step first (no history) and last (final sigma 0), second-order
    midpoint steps in between; its sigmas are sqrt((1 - ab) / ab) at the grid, followed by 0.

With eta > 0, DDIM's variance noise is drawn per step as noise_fn(fold_in(rng, i), shape, dtype),
i the row of the full plan, so a trajectory can be replayed step by step (it is diffusers'
`variance_noise` argument of DDIMScheduler.step).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from brainjax.config import ConfigError
from brainjax.diffusion import noise as noise_lib
from brainjax.diffusion import schedules
from brainjax.diffusion.schedules import NoiseSchedule

DenoiseFn = Callable[[jax.Array, jax.Array, Any], jax.Array]

__all__ = [
    "SAMPLERS", "DEFAULT_SPACING", "DDIMStep", "DPMSolverStep", "inference_timesteps", "make_plan", "ddim_step",
    "dpm_solver_step", "classifier_free_guidance", "negative_condition", "sample", "video_to_video",
    "video_to_video_start",
]

SAMPLERS = ("ddim", "dpm++2m")
# diffusers' default timestep_spacing of the class behind each sampler.
DEFAULT_SPACING = {"ddim": "leading", "dpm++2m": "linspace"}


class DDIMStep(NamedTuple):
  """One DDIM step (or, stacked, a plan of them)."""
  timestep: jax.Array       # int32, the model's t
  prev_timestep: jax.Array  # int32, t - T // num_steps; negative means the final alpha-bar


class DPMSolverStep(NamedTuple):
  """One DPM-Solver++(2M) step (or, stacked, a plan of them)."""
  timestep: jax.Array       # int32, the model's t
  sigma_prev: jax.Array     # float32, the previous step's sigma (for the second-order difference)
  sigma: jax.Array          # float32, sigma at t: sqrt((1 - ab_t) / ab_t)
  sigma_next: jax.Array     # float32, sigma after the step (0 after the last)
  second_order: jax.Array   # bool, midpoint second-order update (else first order)


# ---------------------------------------------------------------------------------------------- validation


def _check_sampler(sampler: str) -> None:
  if sampler not in SAMPLERS:
    raise ConfigError(f"sampler = {sampler!r}: unknown; choose one of {list(SAMPLERS)}.")


def _check_num_steps(schedule: NoiseSchedule, num_steps: int) -> None:
  if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
    raise ConfigError(f"num_steps = {num_steps!r}: must be a positive integer.")
  if num_steps > schedule.num_train_timesteps:
    raise ConfigError(f"num_steps = {num_steps} exceeds the schedule's num_train_timesteps = "
                      f"{schedule.num_train_timesteps}; a model trained on {schedule.num_train_timesteps} "
                      f"timesteps can be sampled with at most that many steps.")


def _check_eta(eta: float, sampler: str) -> None:
  if not isinstance(eta, numbers.Real) or isinstance(eta, bool) or eta < 0:
    raise ConfigError(f"eta = {eta!r}: must be a number >= 0 (0 is deterministic DDIM, 1 is DDPM-like).")
  if eta > 0 and sampler != "ddim":
    raise ConfigError(f"eta = {eta!r} with sampler = {sampler!r}: eta is DDIM's noise scale; use "
                      f"sampler='ddim' or eta=0.")


# ---------------------------------------------------------------------------------------------- timesteps


def inference_timesteps(schedule: NoiseSchedule, num_steps: int, sampler: str = "ddim") -> np.ndarray:
  """The model timesteps of a `num_steps` run, int64 [n]: diffusers' `set_timesteps` for the sampler's class.

  DDIMScheduler for 'ddim', DPMSolverMultistepScheduler for 'dpm++2m'; the
  spacing is schedule.timestep_spacing, or the class's default when None.
  """
  _check_sampler(sampler)
  _check_num_steps(schedule, num_steps)
  T, n = schedule.num_train_timesteps, int(num_steps)
  spacing = schedule.timestep_spacing or DEFAULT_SPACING[sampler]
  if sampler == "ddim":
    if spacing == "linspace":
      ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
      ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64) + schedule.steps_offset
    else:
      ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
  else:
    if spacing == "linspace":
      ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    elif spacing == "leading":
      ts = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1].copy().astype(np.int64) + schedule.steps_offset
    else:
      ts = np.arange(T, 0, -T / n).round().copy().astype(np.int64) - 1
  if ts.min() < 0 or ts.max() >= T or np.any(np.diff(ts) >= 0):
    raise ConfigError(
        f"num_steps = {num_steps} with timestep_spacing = {spacing!r} and steps_offset = {schedule.steps_offset} "
        f"gives the timesteps {ts.tolist()[:8]}{'...' if len(ts) > 8 else ''}, which are not strictly "
        f"decreasing within [0, {T}); use fewer steps or another spacing.")
  return ts


def make_plan(schedule: NoiseSchedule, num_steps: int, sampler: str = "ddim", start: int = 0
              ) -> DDIMStep | DPMSolverStep:
  """The per-step rows of a `num_steps` run from row `start` on, stacked along a leading axis.

  Traceable: the sigmas are computed from schedule.alphas_cumprod with jnp, so
  a schedule passed into jit works; the timesteps are static (numpy).
  """
  ts = inference_timesteps(schedule, num_steps, sampler)
  if sampler == "ddim":
    prev = ts - schedule.num_train_timesteps // int(num_steps)
    return DDIMStep(jnp.asarray(ts[start:], jnp.int32), jnp.asarray(prev[start:], jnp.int32))
  # A zero-terminal-SNR schedule ends at alpha-bar 0 (sigma inf); diffusers' DPM-Solver floors it at 2**-24.
  ac = schedule.alphas_cumprod
  ac = ac.at[-1].set(jnp.maximum(ac[-1], 2.0 ** -24))
  sigmas = jnp.sqrt((1.0 - ac) / ac)[ts]
  sigmas = jnp.concatenate([sigmas, jnp.zeros((1,), jnp.float32)])
  n = len(ts)
  index = np.arange(n)
  return DPMSolverStep(
      timestep=jnp.asarray(ts[start:], jnp.int32),
      sigma_prev=sigmas[np.maximum(index - 1, 0)][start:],
      sigma=sigmas[:-1][start:],
      sigma_next=sigmas[1:][start:],
      # diffusers: first order while there is no previous output, and at the last step
      # (final_sigmas_type 'zero'); second-order midpoint in between.
      second_order=jnp.asarray(((index > start) & (index < n - 1))[start:]))


# ---------------------------------------------------------------------------------------------- steps


def ddim_step(schedule: NoiseSchedule, model_output: jax.Array, sample: jax.Array, step: DDIMStep, *,
              eta: float = 0.0, noise: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """One DDIM update x_t -> x_{prev}: (prev_sample, pred_x0), as diffusers' DDIMScheduler.step.

  With eta > 0, `noise` (standard normal, the latents' shape) is the step's
  variance noise, diffusers' `variance_noise`.
  """
  if eta > 0 and noise is None:
    raise ValueError(f"ddim_step with eta = {eta}: pass the step's variance `noise` (latents-shaped N(0, 1)).")
  x = sample.astype(jnp.float32)
  out = model_output.astype(jnp.float32)
  t, prev_t = step.timestep, step.prev_timestep
  alpha_t = schedule.alphas_cumprod[t]
  alpha_prev = jnp.where(prev_t >= 0, schedule.alphas_cumprod[jnp.maximum(prev_t, 0)], schedule.final_alpha_cumprod)
  x0 = schedules.pred_x0(schedule, out, x, t)
  eps = schedules.pred_eps(schedule, out, x, t)  # from the unclipped output (use_clipped_model_output=False)
  if schedule.clip_sample:
    x0 = jnp.clip(x0, -schedule.clip_sample_range, schedule.clip_sample_range)
  beta_t, beta_prev = 1.0 - alpha_t, 1.0 - alpha_prev
  variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev)
  std = eta * jnp.sqrt(variance)
  # At a zero-terminal-SNR first step (alpha_t = 0) with eta = 1, std**2 = 1 - alpha_prev exactly, and rounding
  # can leave the difference a few ulps below 0; diffusers then returns NaN (25 or 100 trailing steps do). 0 is
  # the exact value.
  direction = jnp.sqrt(jnp.maximum(1.0 - alpha_prev - std ** 2, 0.0)) * eps
  prev = jnp.sqrt(alpha_prev) * x0 + direction
  if eta > 0:
    prev = prev + std * noise.astype(jnp.float32)
  return prev.astype(sample.dtype), x0


def dpm_solver_step(schedule: NoiseSchedule, model_output: jax.Array, sample: jax.Array, prev_x0: jax.Array,
                    step: DPMSolverStep) -> tuple[jax.Array, jax.Array]:
  """One DPM-Solver++ multistep update: (prev_sample, x0), as diffusers' DPMSolverMultistepScheduler.step.

  `prev_x0` is the previous step's x0 prediction (unused on first-order steps);
  return the new x0 to the next step. Arithmetic follows diffusers' float32
  expressions term by term.
  """
  x = sample.astype(jnp.float32)
  out = model_output.astype(jnp.float32)

  def alpha_sigma(s: jax.Array) -> tuple[jax.Array, jax.Array]:
    alpha = 1.0 / jnp.sqrt(s ** 2 + 1.0)
    return alpha, s * alpha

  alpha_t, sigma_t = alpha_sigma(step.sigma_next)
  alpha_s0, sigma_s0 = alpha_sigma(step.sigma)
  alpha_s1, sigma_s1 = alpha_sigma(step.sigma_prev)
  if schedule.prediction_type == "epsilon":
    x0 = (x - sigma_s0 * out) / alpha_s0
  elif schedule.prediction_type == "v_prediction":
    x0 = alpha_s0 * x - sigma_s0 * out
  else:
    x0 = out
  lambda_t = jnp.log(alpha_t) - jnp.log(sigma_t)  # +inf at the final sigma 0: exp(-h) = 0 below
  lambda_s0 = jnp.log(alpha_s0) - jnp.log(sigma_s0)
  lambda_s1 = jnp.log(alpha_s1) - jnp.log(sigma_s1)
  h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
  # First-order steps use D1 = 0, which leaves diffusers' first-order expression unchanged; the
  # scalar select keeps the (unused, possibly inf) 1/r0 of those steps out of the arrays.
  inv_r0 = jnp.where(step.second_order, 1.0 / (h_0 / h), 0.0)
  d0, d1 = x0, inv_r0 * (x0 - prev_x0.astype(jnp.float32))
  phi = alpha_t * (jnp.exp(-h) - 1.0)
  prev = (sigma_t / sigma_s0) * x - phi * d0 - 0.5 * phi * d1
  return prev.astype(sample.dtype), x0


# ---------------------------------------------------------------------------------------------- guidance


def _shapes(tree: Any) -> Any:
  return jax.tree.map(lambda x: tuple(jnp.shape(x)), tree)


def negative_condition(negative: Any, cond: Any) -> Any:
  """`negative` broadcast to the batch of `cond`, leaf by leaf (same pytree structure).

  A negative leaf may lack the batch axis (shape = cond leaf shape[1:]), have a
  batch of 1, or already match. For MinD-Video's adversarial guidance pass the
  fMRI encoder's output for the mean test fMRI.
  """
  def broadcast(neg: Any, pos: Any) -> jax.Array:
    neg, pos_shape = jnp.asarray(neg), jnp.shape(pos)
    if neg.shape == pos_shape[1:]:
      neg = neg[None]
    if neg.ndim != len(pos_shape) or neg.shape[1:] != pos_shape[1:] or neg.shape[0] not in (1, pos_shape[0]):
      raise ValueError(f"negative condition leaf of shape {neg.shape} does not broadcast to the condition's "
                       f"{pos_shape}: give {pos_shape[1:]}, (1,) + {pos_shape[1:]} or {pos_shape}.")
    return jnp.broadcast_to(neg, pos_shape).astype(jnp.result_type(pos))
  try:
    return jax.tree.map(broadcast, negative, cond)
  except ValueError as e:
    if "negative condition leaf" in str(e):
      raise
    raise ValueError(f"the negative condition's structure {jax.tree.structure(negative)} differs from the "
                     f"condition's {jax.tree.structure(cond)}.") from e


def _check_negative(negative: Any, cond: Any) -> None:
  neg_struct, pos_struct = jax.tree.structure(negative), jax.tree.structure(cond)
  if neg_struct != pos_struct:
    raise ValueError(f"negative_cond's pytree structure {neg_struct} differs from cond's {pos_struct}.")
  neg_shapes, pos_shapes = _shapes(negative), _shapes(cond)
  if neg_shapes != pos_shapes:
    raise ValueError(f"negative_cond shapes {neg_shapes} differ from cond shapes {pos_shapes}; the negative "
                     f"needs the same batch (broadcast it with negative_condition(negative, cond)).")


def classifier_free_guidance(denoise_fn: DenoiseFn, guidance_scale: float | jax.Array, negative_cond: Any
                             ) -> DenoiseFn:
  """denoise_fn guided by `negative_cond`: neg + s (pos - neg) from one call on the batch [neg; pos]."""
  def guided(latents: jax.Array, t: jax.Array, cond: Any) -> jax.Array:
    _check_negative(negative_cond, cond)
    both = jax.tree.map(lambda n, p: jnp.concatenate([n, p], axis=0), negative_cond, cond)
    out = denoise_fn(jnp.concatenate([latents, latents], axis=0), t, both)
    neg, pos = jnp.split(out, 2, axis=0)
    return neg + guidance_scale * (pos - neg)
  return guided


def _is_unguided(guidance_scale: float | jax.Array | None) -> bool:
  if guidance_scale is None:
    return True
  try:
    return float(guidance_scale) == 1.0
  except jax.errors.ConcretizationTypeError:
    return False  # a traced scale: always guided


def _guided(denoise_fn: DenoiseFn, guidance_scale: float | jax.Array | None, negative_cond: Any) -> DenoiseFn:
  if _is_unguided(guidance_scale):
    return denoise_fn
  if negative_cond is None:
    raise ConfigError(
        f"guidance_scale = {guidance_scale!r} needs negative_cond: the unconditional embedding (e.g. the empty "
        f"prompt's) for classifier-free guidance, or for MinD-Video's adversarial guidance the fMRI encoder's "
        f"output for the mean test fMRI (negative_condition(negative, cond) broadcasts it). Use "
        f"guidance_scale=None for an unguided run.")
  return classifier_free_guidance(denoise_fn, guidance_scale, negative_cond)


# ---------------------------------------------------------------------------------------------- samplers


def _run(denoise_fn: DenoiseFn, schedule: NoiseSchedule, latents: jax.Array, cond: Any, *, sampler: str,
         num_steps: int, start: int, eta: float, rng: jax.Array | None, noise_fn: noise_lib.NoiseFn) -> jax.Array:
  """Rows start.. of the plan in one lax.scan."""
  plan = make_plan(schedule, num_steps, sampler, start)
  indices = jnp.arange(start, start + plan.timestep.shape[0], dtype=jnp.int32)

  def model(x: jax.Array, t: jax.Array) -> jax.Array:
    out = denoise_fn(x, t, cond)
    if out.shape != x.shape:
      raise ValueError(f"denoise_fn returned shape {tuple(out.shape)} for latents of shape {tuple(x.shape)}; "
                       f"it must return the model output (noise, v or x0) in the latents' shape.")
    return out

  def body(carry: tuple[jax.Array, jax.Array | None], xs: tuple[Any, jax.Array]):
    x, prev_x0 = carry
    step, i = xs
    out = model(x, step.timestep)
    if sampler == "ddim":
      noise = noise_fn(jax.random.fold_in(rng, i), x.shape, x.dtype) if eta > 0 else None
      x, _ = ddim_step(schedule, out, x, step, eta=eta, noise=noise)
      return (x, None), None
    x, x0 = dpm_solver_step(schedule, out, x, prev_x0, step)
    return (x, x0), None

  prev_x0 = jnp.zeros(latents.shape, jnp.float32) if sampler == "dpm++2m" else None
  (x, _), _ = jax.lax.scan(body, (latents, prev_x0), (plan, indices))
  return x


def _check_common(schedule: NoiseSchedule, sampler: str, num_steps: int, eta: float, rng: jax.Array | None) -> None:
  _check_sampler(sampler)
  _check_num_steps(schedule, num_steps)
  _check_eta(eta, sampler)
  if eta > 0 and rng is None:
    raise ConfigError(f"eta = {eta!r} draws DDIM variance noise at every step: pass rng.")


def sample(denoise_fn: DenoiseFn, schedule: NoiseSchedule, initial_latents: jax.Array, cond: Any, *,
           sampler: str = "ddim", num_steps: int = 50, eta: float = 0.0,
           guidance_scale: float | jax.Array | None = None, negative_cond: Any = None,
           rng: jax.Array | None = None, noise_fn: noise_lib.NoiseFn | None = None) -> jax.Array:
  """Denoise `initial_latents` (pure noise, unit variance) over `num_steps` steps; returns the final latents.

  sampler, num_steps and eta are static; guidance_scale may be traced (then the
  run is always guided). `rng` and `noise_fn` (default Gaussian) draw DDIM's
  variance noise when eta > 0. Jit it with denoise_fn closed over, e.g.
  jax.jit(lambda params, z, c: sample(functools.partial(unet.apply, params), schedule, z, c, ...)).
  """
  _check_common(schedule, sampler, num_steps, eta, rng)
  fn = _guided(denoise_fn, guidance_scale, negative_cond)
  return _run(fn, schedule, initial_latents, cond, sampler=sampler, num_steps=num_steps, start=0, eta=eta,
              rng=rng, noise_fn=noise_fn or noise_lib.gaussian_noise)


def video_to_video_start(num_steps: int, strength: float) -> int:
  """The first plan row of a renoising run (diffusers' get_timesteps); num_steps when nothing runs."""
  if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 <= strength <= 1:
    raise ConfigError(f"strength = {strength!r}: must be a number in [0, 1] (the fraction of the schedule "
                      f"re-run; Brain Netflix uses 0.8).")
  init = min(int(num_steps * strength), num_steps)
  return max(num_steps - init, 0)


def video_to_video(denoise_fn: DenoiseFn, schedule: NoiseSchedule, latents: jax.Array, cond: Any,
                   strength: float, rng: jax.Array | None = None, *, sampler: str = "ddim", num_steps: int = 50,
                   eta: float = 0.0, guidance_scale: float | jax.Array | None = None, negative_cond: Any = None,
                   noise: jax.Array | None = None, noise_fn: noise_lib.NoiseFn | None = None) -> jax.Array:
  """Renoise `latents` to where `strength` of the schedule remains and denoise from there (module doc).

  strength is static. The initial noise is `noise` if given, else
  noise_fn(noise_rng, shape, dtype) (default Gaussian) with
  noise_rng, step_rng = jax.random.split(rng); DDIM's eta > 0 noise uses rng
  (step_rng when the noise was drawn). strength 0 returns `latents`; strength 1
  equals sample(initial_latents=noise) (with the same rng for eta > 0).
  """
  _check_common(schedule, sampler, num_steps, eta, rng)
  start = video_to_video_start(num_steps, strength)
  if start >= num_steps:
    return latents
  noise_fn = noise_fn or noise_lib.gaussian_noise
  if noise is None:
    if rng is None:
      raise ConfigError("video_to_video needs rng (or an explicit `noise` array) to renoise the latents.")
    noise_rng, rng = jax.random.split(rng)
    noise = noise_fn(noise_rng, latents.shape, latents.dtype)
  elif noise.shape != latents.shape:
    raise ValueError(f"noise has shape {tuple(noise.shape)}; the latents have {tuple(latents.shape)}.")
  if start == 0:
    x = noise.astype(latents.dtype)
  else:
    t_start = int(inference_timesteps(schedule, num_steps, sampler)[start])
    x = schedules.add_noise(schedule, latents, noise, t_start)
  fn = _guided(denoise_fn, guidance_scale, negative_cond)
  return _run(fn, schedule, x, cond, sampler=sampler, num_steps=num_steps, start=start, eta=eta, rng=rng,
              noise_fn=noise_fn)
