r"""Noise schedules with diffusers' conventions, the forward process and the diffusion training loss.

diffusers is the numerical reference: the betas and alphas_cumprod below are
bit-identical to its schedulers' float32 tensors (torch.linspace's two-sided
evaluation and a float64-accumulated cumprod are reproduced in numpy), so a
model trained or sampled with brainjax sees exactly the noise levels it saw in
PyTorch.

  NoiseSchedule                 a frozen pytree: `betas` [T] and `alphas_cumprod` [T] (float32 array
                                leaves, so a schedule is an ordinary jit argument) plus static sampler
                                settings: prediction_type, timestep_spacing, steps_offset,
                                set_alpha_to_one, clip_sample, clip_sample_range
    .create(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
            beta_schedule='scaled_linear', ...)      Stable Diffusion's schedule by default
    .from_config(config)        the contents of a diffusers scheduler_config.json
  load_schedule(path)           scheduler_config.json, a `scheduler/` directory or a pipeline directory
                                holding one (local or gs://, through etils.epath)
  add_noise(schedule, x0, noise, t)          sqrt(ab_t) x0 + sqrt(1 - ab_t) noise    (q(x_t | x0))
  velocity(schedule, x0, noise, t)           sqrt(ab_t) noise - sqrt(1 - ab_t) x0    (the v target)
  training_target(schedule, x0, noise, t)    noise, v or x0, by prediction_type
  pred_x0 / pred_eps(schedule, model_output, sample, t)   a model output read as x0 or as noise
  sample_timesteps(rng, batch, schedule)     uniform int32 training timesteps in [0, T)
  diffusion_loss(schedule, predict_fn, x0, cond, rng, *, noise_fn=None, t=None)
                                             MSE between predict_fn(x_t, t, cond) and the target;
                                             `noise_fn` (brainjax.diffusion.noise) makes the
                                             noise pluggable, e.g. NeuralFlix's dependent noise

`t` is an int array: a scalar (one timestep for the whole batch) or one per
sample [B]; coefficients broadcast over the remaining axes, so image latents
[N, H, W, C] and video latents [B, T, H, W, C] are handled alike.

Schedule options (diffusers' names and meanings):
  beta_schedule       'linear' (torch.linspace(beta_start, beta_end)), 'scaled_linear' (linspace of the
                      square roots, squared: SD, Zeroscope), 'squaredcos_cap_v2' (the cosine alpha-bar
                      of Nichol & Dhariwal, betas capped at 0.999; beta_start/beta_end unused), or
                      explicit `trained_betas`
  prediction_type     'epsilon', 'v_prediction' or 'sample' (x0)
  timestep_spacing    'leading' | 'trailing' | 'linspace', or None: the default of the diffusers class
                      behind the sampler ('leading' for DDIMScheduler, 'linspace' for
                      DPMSolverMultistepScheduler), which is what `X.from_config(config)` gives for a
                      config without the key (SD 1.5's has none)
  steps_offset        added to 'leading' timesteps (SD 1.5 and Zeroscope use 1)
  set_alpha_to_one    DDIM's last step goes to alpha-bar 1 (True) or to alphas_cumprod[0] (False)
  clip_sample         DDIM clamps its x0 prediction to +-clip_sample_range (diffusers'
                      DPMSolverMultistepScheduler has no such option, so dpm++2m ignores it)
  rescale_betas_zero_snr  rescale the betas to a zero terminal SNR (Lin et al. 2024; needs v- or
                      x0-prediction); diffusers' DPM-Solver then floors the last alpha-bar at 2**-24,
                      and so does brainjax's
Not implemented, and rejected with an error: thresholding, Karras /
exponential / beta / flow sigmas, learned variances.

load_schedule accepts the DDPM-family schedulers whose configs describe the same
discrete-time process (SUPPORTED_CLASSES: DDIM, DDPM, PNDM, DPM-Solver, Euler, LMS,
UniPC, DEIS, Heun, KDPM2). Only the noise schedule and model parametrisation are
taken from the file; keys that configure the file's own solver (PNDM's
skip_prk_steps, DPM-Solver's solver_order, ...) are ignored, because brainjax runs
the sampler named at sampling time, as `DDIMScheduler.from_config(pipe.scheduler.config)`
does in diffusers. Keys absent from the file take the defaults of diffusers'
DDIMScheduler (betas 1e-4..0.02 'linear', epsilon, set_alpha_to_one True,
clip_sample True), again what from_config does; Stable Diffusion's and
Zeroscope's files set every one of these explicitly. Unknown keys, unknown class
names and options that would change the process are errors naming them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from brainjax.config import ConfigError
from brainjax.diffusion import noise as noise_lib

__all__ = [
    "NoiseSchedule", "load_schedule", "make_betas", "rescale_zero_terminal_snr", "add_noise", "velocity",
    "training_target", "pred_x0", "pred_eps", "sample_timesteps", "diffusion_loss", "BETA_SCHEDULES", "PREDICTION_TYPES", "TIMESTEP_SPACINGS",
    "SUPPORTED_CLASSES",
]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

SUPPORTED_CLASSES = (
    "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler",
    "DEISMultistepScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
)

# Keys of a scheduler config that brainjax reads, with diffusers' DDIMScheduler defaults for absent keys.
CONFIG_DEFAULTS: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
    prediction_type="epsilon", set_alpha_to_one=True, steps_offset=0, timestep_spacing=None, clip_sample=True,
    clip_sample_range=1.0, rescale_betas_zero_snr=False)

# Keys that configure the file's own solver; brainjax runs the sampler named at sampling time.
IGNORED_KEYS = frozenset({
    "skip_prk_steps", "solver_order", "solver_type", "algorithm_type", "lower_order_final", "euler_at_final",
    "predict_x0", "disable_corrector", "solver_p", "interpolation_type", "dynamic_thresholding_ratio",
    "sample_max_value", "flow_shift", "time_shift_type", "sigma_min", "sigma_max"})

# Keys brainjax does not implement beyond these values (the first is diffusers' default), with the reason.
RESTRICTED_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "thresholding": ((False,), "dynamic thresholding is for pixel-space models"),
    "use_karras_sigmas": ((False,), "brainjax samples on the model's own timestep grid"),
    "use_exponential_sigmas": ((False,), "brainjax samples on the model's own timestep grid"),
    "use_beta_sigmas": ((False,), "brainjax samples on the model's own timestep grid"),
    "use_lu_lambdas": ((False,), "brainjax samples on the model's own timestep grid"),
    "use_flow_sigmas": ((False,), "flow-matching models are a different process"),
    "use_dynamic_shifting": ((False,), "flow-matching models are a different process"),
    "shift_terminal": ((None,), "flow-matching models are a different process"),
    "timestep_type": (("discrete",), "continuous timesteps are not implemented"),
    "final_sigmas_type": (("zero",), "brainjax's samplers end at sigma 0"),
    "lambda_min_clipped": ((-math.inf,), "brainjax's DPM-Solver does not clip lambda"),
    "variance_type": ((None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"),
                      "a learned variance means the model outputs extra channels"),
}


# ---------------------------------------------------------------------------------------------- betas


def _torch_linspace(start: float, end: float, n: int) -> np.ndarray:
  """torch.linspace(start, end, n, dtype=float32), bit for bit.

  torch evaluates the first half from `start` and the second half from `end`
  (step computed in double, rounded to float32), which is not what
  np.linspace(...).astype(float32) gives in the last bit.
  """
  if n == 1:
    return np.array([start], np.float32)
  step = np.float64(np.float32((end - start) / (n - 1)))
  i = np.arange(n, dtype=np.float64)
  values = np.where(i < n // 2, np.float64(np.float32(start)) + i * step,
                    np.float64(np.float32(end)) - (n - 1 - i) * step)
  return values.astype(np.float32)


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
  """diffusers' betas_for_alpha_bar (cosine): discretised alpha-bar of Nichol & Dhariwal (2021)."""
  def alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], np.float32)


def make_betas(beta_schedule: str, beta_start: float, beta_end: float, num_train_timesteps: int) -> np.ndarray:
  """float32 betas [num_train_timesteps], equal to diffusers' scheduler.betas."""
  if beta_schedule == "linear":
    return _torch_linspace(beta_start, beta_end, num_train_timesteps)
  if beta_schedule == "scaled_linear":
    return _torch_linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps) ** 2
  if beta_schedule == "squaredcos_cap_v2":
    return _cosine_betas(num_train_timesteps)
  raise ConfigError(f"beta_schedule = {beta_schedule!r}: unknown; choose one of {list(BETA_SCHEDULES)} "
                    f"(or pass trained_betas).")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Betas whose last alpha-bar is exactly 0 (Lin et al. 2024, Algorithm 1; diffusers' function of this name).

  sqrt(alpha-bar) is shifted so its last value is 0 and scaled so its first is
  unchanged. With SD's schedule the last step otherwise keeps sqrt(alpha-bar)
  = 0.068 of the signal: training then lets the model read the image's mean
  (for small latents: the background) off x_T, which pure-noise sampling
  never supplies, so every sample gets the same mean brightness and colour.
  float32 throughout, as torch computes it.
  """
  sqrt_ab = np.sqrt(_alphas_cumprod(betas))
  first, last = sqrt_ab[0], sqrt_ab[-1]
  sqrt_ab = (sqrt_ab - last) * (first / (first - last))
  alphas_bar = sqrt_ab ** 2
  alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
  return (np.float32(1.0) - alphas).astype(np.float32)


def _alphas_cumprod(betas: np.ndarray) -> np.ndarray:
  # torch.cumprod of float32 accumulates in double on CPU; this matches it bit for bit.
  return np.cumprod((np.float32(1.0) - betas).astype(np.float64)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- schedule


def _static(**kwargs: Any) -> Any:
  return dataclasses.field(metadata=dict(static=True), **kwargs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class NoiseSchedule:
  """A discrete-time DDPM noise schedule and the settings its samplers need (see the module doc).

  Arrays are pytree leaves, everything else is static, so a schedule can be an
  argument of a jitted function; `num_train_timesteps` is the (static) length.
  """
  betas: jax.Array                      # [T] float32
  alphas_cumprod: jax.Array             # [T] float32, prod_{s<=t} (1 - beta_s)
  prediction_type: str = _static(default="epsilon")
  timestep_spacing: str | None = _static(default=None)
  steps_offset: int = _static(default=0)
  set_alpha_to_one: bool = _static(default=True)
  clip_sample: bool = _static(default=False)
  clip_sample_range: float = _static(default=1.0)

  @property
  def num_train_timesteps(self) -> int:
    return int(self.betas.shape[0])

  @property
  def final_alpha_cumprod(self) -> jax.Array:
    """The alpha-bar DDIM's last step goes to: 1, or alphas_cumprod[0] when set_alpha_to_one is False."""
    return jnp.ones((), jnp.float32) if self.set_alpha_to_one else self.alphas_cumprod[0]

  def __repr__(self) -> str:
    return (f"NoiseSchedule(num_train_timesteps={self.num_train_timesteps}, "
            f"prediction_type={self.prediction_type!r}, timestep_spacing={self.timestep_spacing!r}, "
            f"steps_offset={self.steps_offset}, set_alpha_to_one={self.set_alpha_to_one}, "
            f"clip_sample={self.clip_sample})")

  @classmethod
  def create(cls, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
             beta_schedule: str = "scaled_linear", *, trained_betas: Sequence[float] | np.ndarray | None = None,
             prediction_type: str = "epsilon", set_alpha_to_one: bool = True, steps_offset: int = 0,
             timestep_spacing: str | None = None, clip_sample: bool = False, clip_sample_range: float = 1.0,
             rescale_betas_zero_snr: bool = False) -> NoiseSchedule:
    """A schedule from diffusers' scheduler arguments; the defaults are Stable Diffusion's betas."""
    if not isinstance(num_train_timesteps, (int, np.integer)) or isinstance(num_train_timesteps, bool) or (
        num_train_timesteps < 1):
      raise ConfigError(f"num_train_timesteps = {num_train_timesteps!r}: must be a positive integer.")
    if prediction_type not in PREDICTION_TYPES:
      raise ConfigError(f"prediction_type = {prediction_type!r}: choose one of {list(PREDICTION_TYPES)}.")
    if rescale_betas_zero_snr and prediction_type == "epsilon":
      # At alpha-bar 0 the input is pure noise, so a noise prediction says nothing about x0 (pred_x0
      # divides by sqrt(alpha-bar) = 0). Lin et al. (2024) pair the rescale with v-prediction.
      raise ConfigError("rescale_betas_zero_snr = True with prediction_type = 'epsilon': at zero terminal SNR "
                        "an epsilon model cannot recover x0 at the last timestep; use 'v_prediction' (or "
                        "'sample'), or set rescale_betas_zero_snr = False.")
    if timestep_spacing is not None and timestep_spacing not in TIMESTEP_SPACINGS:
      raise ConfigError(f"timestep_spacing = {timestep_spacing!r}: choose one of {list(TIMESTEP_SPACINGS)}, or "
                        f"None for the sampler's diffusers default.")
    if not isinstance(steps_offset, (int, np.integer)) or isinstance(steps_offset, bool) or steps_offset < 0:
      raise ConfigError(f"steps_offset = {steps_offset!r}: must be a non-negative integer (SD 1.5 uses 1).")
    if not clip_sample_range > 0:
      raise ConfigError(f"clip_sample_range = {clip_sample_range!r}: must be positive.")
    if trained_betas is not None:
      betas = np.asarray(trained_betas, np.float32)
      if betas.shape != (num_train_timesteps,):
        raise ConfigError(f"trained_betas has shape {betas.shape}; expected ({num_train_timesteps},), one beta "
                          f"per training timestep (num_train_timesteps = {num_train_timesteps}).")
      if not np.all((betas > 0) & (betas < 1)):
        raise ConfigError("trained_betas: every beta must be in (0, 1).")
    else:
      if beta_schedule != "squaredcos_cap_v2" and not 0 < beta_start <= beta_end < 1:
        raise ConfigError(f"beta_start = {beta_start!r}, beta_end = {beta_end!r}: need 0 < beta_start <= "
                          f"beta_end < 1 (SD uses 0.00085 and 0.012).")
      betas = make_betas(beta_schedule, beta_start, beta_end, int(num_train_timesteps))
    if rescale_betas_zero_snr:
      betas = rescale_zero_terminal_snr(betas)
    return cls(betas=jnp.asarray(betas), alphas_cumprod=jnp.asarray(_alphas_cumprod(betas)),
               prediction_type=prediction_type, timestep_spacing=timestep_spacing, steps_offset=int(steps_offset),
               set_alpha_to_one=bool(set_alpha_to_one), clip_sample=bool(clip_sample),
               clip_sample_range=float(clip_sample_range))

  @classmethod
  def from_config(cls, config: Mapping[str, Any], origin: str = "scheduler config") -> NoiseSchedule:
    """A schedule from a diffusers scheduler config dict (see the module doc for what is read)."""
    class_name = config.get("_class_name")
    if class_name is not None and class_name not in SUPPORTED_CLASSES:
      raise ConfigError(
          f"{origin}: _class_name {class_name!r} is not a scheduler brainjax reads. brainjax takes the noise "
          f"schedule of a DDPM-family discrete-time scheduler ({', '.join(SUPPORTED_CLASSES)}) and samples "
          f"with DDIM or DPM-Solver++(2M); flow-matching, consistency (LCM/TCD) and other schedulers are "
          f"not supported.")
    known = set(CONFIG_DEFAULTS) | IGNORED_KEYS | set(RESTRICTED_KEYS)
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
      raise ConfigError(f"{origin}: unknown scheduler option(s) {unknown}; brainjax understands "
                        f"{sorted(known)}. Remove the option if it is at its default, or use a model whose "
                        f"scheduler brainjax implements.")
    for key, (allowed, reason) in RESTRICTED_KEYS.items():
      if key in config and config[key] not in allowed:
        raise ConfigError(f"{origin}: {key} = {config[key]!r} is not supported ({reason}); brainjax implements "
                          f"{key} = {allowed[0]!r}, diffusers' default.")
    values = {k: config.get(k, v) for k, v in CONFIG_DEFAULTS.items()}
    try:
      return cls.create(**values)
    except ConfigError as e:
      raise ConfigError(f"{origin}: {e}") from None


def load_schedule(path: str | epath.PathLike) -> NoiseSchedule:
  """NoiseSchedule from a diffusers scheduler_config.json (local or gs://).

  `path` is the json file, the `scheduler/` directory holding it, or a pipeline
  directory (e.g. a copy of stable-diffusion-v1-5 or zeroscope_v2_576w) with a
  `scheduler/` subfolder.
  """
  path = epath.Path(path)
  candidates = [path, path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"]
  file = next((c for c in candidates if c.is_file()), None)
  if file is None:
    raise FileNotFoundError(f"no scheduler config at {path}: expected a scheduler_config.json file, a "
                            f"scheduler/ directory holding one, or a diffusers pipeline directory with "
                            f"scheduler/scheduler_config.json.")
  try:
    config = json.loads(file.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f"{file} is not valid JSON ({e}).") from e
  if not isinstance(config, dict):
    raise ConfigError(f"{file} holds a JSON {type(config).__name__}; expected an object of scheduler options.")
  return NoiseSchedule.from_config(config, origin=str(file))


# ---------------------------------------------------------------------------------------------- forward process


def _coefficient(values: jax.Array, t: jax.Array | int, ndim: int, batch: int) -> jax.Array:
  """values[t] shaped to broadcast against an [B, ...] array with `ndim` axes (t scalar or [B])."""
  t = jnp.asarray(t)
  if t.ndim == 0:
    return values[t]
  if t.shape != (batch,):
    raise ValueError(f"timesteps have shape {tuple(t.shape)}; give a scalar or one per sample ({batch},).")
  return values[t].reshape((batch,) + (1,) * (ndim - 1))


def _sqrt_alphas(schedule: NoiseSchedule, t: jax.Array | int, like: jax.Array) -> tuple[jax.Array, jax.Array]:
  alpha = _coefficient(schedule.alphas_cumprod, t, like.ndim, like.shape[0] if like.ndim else 1)
  return jnp.sqrt(alpha), jnp.sqrt(1.0 - alpha)


def add_noise(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array | int) -> jax.Array:
  """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise (diffusers' scheduler.add_noise)."""
  a, s = _sqrt_alphas(schedule, t, x0)
  return (a * x0 + s * noise).astype(x0.dtype)


def velocity(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array | int) -> jax.Array:
  """v = sqrt(ab_t) noise - sqrt(1 - ab_t) x0 (diffusers' scheduler.get_velocity)."""
  a, s = _sqrt_alphas(schedule, t, x0)
  return (a * noise - s * x0).astype(x0.dtype)


def training_target(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array, t: jax.Array | int) -> jax.Array:
  """What the model learns to output: the noise, v, or x0 (by schedule.prediction_type)."""
  if schedule.prediction_type == "epsilon":
    return noise
  if schedule.prediction_type == "v_prediction":
    return velocity(schedule, x0, noise, t)
  return x0


def pred_x0(schedule: NoiseSchedule, model_output: jax.Array, sample: jax.Array, t: jax.Array | int) -> jax.Array:
  """The clean sample implied by a model output at x_t = sample (diffusers' pred_original_sample)."""
  a, s = _sqrt_alphas(schedule, t, sample)
  if schedule.prediction_type == "epsilon":
    return (sample - s * model_output) / a
  if schedule.prediction_type == "v_prediction":
    return a * sample - s * model_output
  return model_output


def pred_eps(schedule: NoiseSchedule, model_output: jax.Array, sample: jax.Array, t: jax.Array | int) -> jax.Array:
  """The noise implied by a model output at x_t = sample."""
  a, s = _sqrt_alphas(schedule, t, sample)
  if schedule.prediction_type == "epsilon":
    return model_output
  if schedule.prediction_type == "v_prediction":
    return a * model_output + s * sample
  return (sample - a * model_output) / s


def sample_timesteps(rng: jax.Array, batch: int, schedule: NoiseSchedule) -> jax.Array:
  """int32 [batch] training timesteps, uniform over [0, num_train_timesteps)."""
  return jax.random.randint(rng, (batch,), 0, schedule.num_train_timesteps, jnp.int32)


def diffusion_loss(schedule: NoiseSchedule, predict_fn: Callable[[jax.Array, jax.Array, Any], jax.Array],
                   x0: jax.Array, cond: Any, rng: jax.Array, *, noise_fn: noise_lib.NoiseFn | None = None,
                   t: jax.Array | None = None, snr_gamma: float = 0.0) -> jax.Array:
  """The denoising loss: mean over all elements of (predict_fn(x_t, t, cond) - target)^2, in float32.

  x0 are clean latents [B, ...]; `rng` splits into (t_rng, noise_rng): per
  sample a timestep t ~ U[0, T) (or the given `t` [B]) and noise from
  `noise_fn(noise_rng, shape, dtype)` (default
  i.i.d. Gaussian; `noise.dependent_noise_fn(0.25)` for NeuralFlix) make
  x_t = add_noise(x0, noise, t). `predict_fn(x_t, t [B], cond)` is the model;
  the target is training_target (noise, v or x0). This is diffusers'
  train_text_to_image loss, F.mse_loss(pred.float(), target.float()).

  snr_gamma > 0 weights each sample's mean squared error by Min-SNR-γ
  (Hang et al. 2023; diffusers' `--snr_gamma`, 5 recommended): min(SNR_t, γ)
  divided by SNR_t (ε), SNR_t + 1 (v) or 1 (x0), SNR_t = ab_t / (1 - ab_t).
  It stops the easy low-noise steps from dominating the gradient and makes a
  model trained from scratch converge several times faster. It also nearly
  stops the high-noise steps from training: with v-prediction on a
  zero-terminal-SNR schedule the weight is 0 at t = T and, on the demo's
  schedule, under 0.02 for t > 800, where a video model's temporal layers
  learn to share each frame's layout (the demo's video stages train
  without it; configs/mindvideo.py).
  """
  noise_fn = noise_fn or noise_lib.gaussian_noise
  t_rng, noise_rng = jax.random.split(rng)
  if t is None:
    t = sample_timesteps(t_rng, x0.shape[0], schedule)
  noise = noise_fn(noise_rng, x0.shape, x0.dtype)
  noisy = add_noise(schedule, x0, noise, t)
  prediction = predict_fn(noisy, t, cond)
  target = training_target(schedule, x0, noise, t)
  if prediction.shape != target.shape:
    raise ValueError(f"predict_fn returned shape {tuple(prediction.shape)}; the target has shape "
                     f"{tuple(target.shape)} (the latents' shape).")
  squared = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
  if not snr_gamma:
    return jnp.mean(squared)
  per_sample = jnp.mean(squared, axis=tuple(range(1, squared.ndim)))
  return jnp.mean(per_sample * min_snr_weights(schedule, t, snr_gamma))


def snr(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
  """Signal-to-noise ratio ab_t / (1 - ab_t) at timesteps t (diffusers' training_utils.compute_snr)."""
  alpha = schedule.alphas_cumprod[t]
  return alpha / (1.0 - alpha)


def min_snr_weights(schedule: NoiseSchedule, t: jax.Array, gamma: float) -> jax.Array:
  """Per-sample Min-SNR-γ loss weights for timesteps t [B] (see diffusion_loss)."""
  if gamma < 0:
    raise ValueError(f"snr_gamma = {gamma}: must be >= 0 (0 turns the Min-SNR weighting off; 5 is usual).")
  ratio = snr(schedule, t)
  clipped = jnp.minimum(ratio, gamma)
  if schedule.prediction_type == "epsilon":
    return clipped / ratio
  if schedule.prediction_type == "v_prediction":
    return clipped / (ratio + 1.0)
  return clipped
