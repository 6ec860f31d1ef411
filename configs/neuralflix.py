r"""NeuralFlix ("Reconstructing Vivid Videos from Human Brain Activity", Sun, Li, Chen & Moens).

  python -m brainjax.main --config=configs/neuralflix.py:demo --workdir=/tmp/neuralflix_demo
  python -m brainjax.main --config=configs/neuralflix.py --workdir=gs://BUCKET/neuralflix \
      --config.clip_embed.text_path=gs://BUCKET/weights/clip-vit-large-patch14 \
      --config.clip_embed.vision_path=gs://BUCKET/weights/clip-vit-large-patch14 \
      --config.video_finetune.unet_path=gs://BUCKET/weights/stable-diffusion-v1-5/unet \
      --config.video_finetune.vae_path=gs://BUCKET/weights/stable-diffusion-v1-5/vae

The MinD-Video pipeline (configs/mindvideo.py: the same stages, data and
evaluation) with NeuralFlix's three changes:
  1. Phase 1, `align`: spatial masking (γ_spa of each token's dims zeroed, the
     same positions across the window) and temporal interpolation (Eq. 1, γ_tem)
     of the fMRI tokens, each view contrasted with the unaugmented embedding:
     L = μ_spa L_spa + μ_tem L_tem + L_emb (Eq. 3), L_emb = L_text + L_image.
  2. Phase 2, the video UNet (`variant='neuralflix'`): pseudo-3-D convolutions
     and a temporal attention after each spatial self-attention in which a frame
     sees the previous two frames.
  3. Dependent prior noise (Eq. 7, ε_j = √β ε_s + √(1-β) ε_j,i) when noising
     latents in `video_finetune` and `cotrain` and as the initial latents in
     `cotrain`'s samples and `evaluate`.
The encoder pretraining is MBM (`mbm_pretrain`); the paper starts from the
DC-MAE encoder of "Contrast, Attend and Diffuse", whose extra contrastive
pretraining terms are not in brainjax (load such a checkpoint with
--config.align.init_from=DIR if you have one).

Table 1 (the paper's ablations), as config fields:
  γ_spa  --config.align.spatial_mask_ratio=0.2       (rows 0-3: 0 / 0.2 / 0.4 / 0.6)
  γ_tem  --config.align.temporal_interp_ratio=0.3333 (rows 1, 4: 1/3, 1/2)
  μ_spa  --config.align.mu_spa=1.0, μ_tem --config.align.mu_tem=1.0 (rows 5-7)
  dependent noise on/off and β  --config.neuralflix_beta=0.75 (0 = off; rows 8-10: 0.25 / 0.5 / 0.75)
The `paper` preset is row 10 (β = 0.75), which the paper gives for reproducing
subject 1; `python -m brainjax.ablate --config=configs/neuralflix.py:demo
--workdir=DIR` runs the rows listed in `config.ablations`.

Presets:
  paper  cc2017 subject 1 (+ HCP for MBM), SD 1.5 at 256 x 256 and 3 FPS, 6 frames per
         2-s window; video_finetune 1000 steps, lr 2e-5, batch 14; cotrain lr 2e-5, batch 24.
  demo   the built-in synthetic benchmark with small models: minutes on a laptop CPU.
"""

import ml_collections

from brainjax import config as cfg
from brainjax.models import video_unet

mindvideo = cfg.sibling_recipe("mindvideo", __file__)

# Table 1, row 1 (the augmentation settings every later row keeps).
AUGMENTATION = dict(spatial_mask_ratio=0.2, temporal_interp_ratio=1 / 3, mu_spa=1.0, mu_tem=1.0, emb_reduction="sum")
PAPER_BETA = 0.75  # row 10


def _neuralflix(config: ml_collections.ConfigDict, beta: float) -> ml_collections.ConfigDict:
  """MinD-Video's recipe -> NeuralFlix's: augmented alignment, the neuralflix UNet, dependent noise."""
  config.align.update(AUGMENTATION)
  # One knob for Eq. 7's β: the stages that noise or sample latents read it through a
  # reference, so an ablation changes it everywhere at once.
  config.neuralflix_beta = beta
  for stage in ("video_finetune", "cotrain", "evaluate"):
    if stage in config:
      config[stage].dependent_noise_beta = config.get_ref("neuralflix_beta")
  for stage in ("video_finetune", "cotrain"):
    config[stage].variant = "neuralflix"
  return config


def paper() -> ml_collections.ConfigDict:
  config = _neuralflix(mindvideo.paper(), PAPER_BETA)
  # SD 1.5's 2-D layers stay frozen; the demo's small stand-in (unet_fit) has everything trained.
  config.video_finetune.optim.trainable = [video_unet.trainable_pattern("neuralflix")]
  config.video_finetune.update(num_steps=1000, batch_size=14)
  config.video_finetune.optim.lr = 2e-5
  config.cotrain.batch_size = 24
  config.cotrain.optim.lr = 2e-5
  return config


def demo() -> ml_collections.ConfigDict:
  config = _neuralflix(mindvideo.demo(), PAPER_BETA)
  # The same CPU budget as MinD-Video's demo: alignment runs three encoder passes per step (plain,
  # spatially masked, temporally interpolated) and the pseudo-3-D convolutions double the UNet's step.
  # Its shorter video stages leave time for 1200 steps of the 2-D UNet, which its 2-way needs
  # (docs/results.md, "the demo's settings").
  config.unet_fit.num_steps = 1200
  config.unet_fit.checkpoint_every_steps = 300
  config.align.num_steps = 100
  config.video_finetune.num_steps = 120
  config.cotrain.num_steps = 200
  # The video stages keep Min-SNR-5, unlike MinD-Video's demo: the dependent noise already gives the frames
  # one layout, and image 2-way was higher with it (docs/results.md, "the demo's settings").
  for stage in ("video_finetune", "cotrain"):
    config[stage].snr_gamma = 5.0
  config.ablations = ml_collections.ConfigDict({
      "no_augmentation": ["align.spatial_mask_ratio=0.0", "align.temporal_interp_ratio=0.0",
                          "align.mu_spa=0.0", "align.mu_tem=0.0"],
      "spatial_mask_40": ["align.spatial_mask_ratio=0.4"],
      "temporal_interp_half": ["align.temporal_interp_ratio=0.5"],
      "no_dependent_noise": ["neuralflix_beta=0.0"],
      "beta_25": ["neuralflix_beta=0.25"],
      "no_caption_readout": ["cotrain.readout_fit.alpha=0.0", "align.head.readout_rank=0"],
  })
  return config


def get_config(preset: str = "paper") -> ml_collections.ConfigDict:
  return cfg.select_preset(preset, {"paper": paper, "demo": demo}, "neuralflix")
