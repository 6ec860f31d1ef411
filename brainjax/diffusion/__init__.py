"""Diffusion: noise schedules, training loss, samplers, guidance, dependent noise, video-to-video.

  schedules  NoiseSchedule (diffusers' betas / alphas_cumprod, bit-identical), load_schedule(path),
             add_noise, velocity, training_target, pred_x0, pred_eps, sample_timesteps, diffusion_loss,
             snr, min_snr_weights (Min-SNR-γ loss weighting)
  noise      gaussian_noise, dependent_noise (NeuralFlix Eq. 7), dependent_noise_fn
  sampling   sample (DDIM / DPM-Solver++(2M) in one lax.scan), video_to_video (Brain Netflix
             renoising), classifier_free_guidance / negative_condition (also MinD-Video's adversarial
             guidance), the pure steps ddim_step / dpm_solver_step, inference_timesteps, make_plan

Everything is a pure function of arrays and pytrees; a NoiseSchedule is a pytree
whose arrays are leaves, so it passes into jit like params.
"""

from brainjax.diffusion.noise import NoiseFn, dependent_noise, dependent_noise_fn, gaussian_noise
from brainjax.diffusion.sampling import (
    DDIMStep,
    DPMSolverStep,
    SAMPLERS,
    classifier_free_guidance,
    ddim_step,
    dpm_solver_step,
    inference_timesteps,
    make_plan,
    negative_condition,
    sample,
    video_to_video,
    video_to_video_start,
)
from brainjax.diffusion.schedules import (
    NoiseSchedule,
    add_noise,
    diffusion_loss,
    load_schedule,
    min_snr_weights,
    pred_eps,
    pred_x0,
    sample_timesteps,
    snr,
    training_target,
    velocity,
)

__all__ = [
    "NoiseFn", "dependent_noise", "dependent_noise_fn", "gaussian_noise",
    "DDIMStep", "DPMSolverStep", "SAMPLERS", "classifier_free_guidance", "ddim_step", "dpm_solver_step",
    "inference_timesteps", "make_plan", "negative_condition", "sample", "video_to_video", "video_to_video_start",
    "NoiseSchedule", "add_noise", "diffusion_loss", "load_schedule", "pred_eps", "pred_x0", "sample_timesteps",
    "min_snr_weights", "snr", "training_target", "velocity",
]
