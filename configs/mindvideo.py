r"""MinD-Video ("Cinematic Mindscapes", Chen, Qing & Zhou, NeurIPS 2023).

  python -m brainjax.main --config=configs/mindvideo.py:demo --workdir=/tmp/mindvideo_demo
  python -m brainjax.main --config=configs/mindvideo.py --workdir=gs://BUCKET/mindvideo \
      --config.clip_embed.text_path=gs://BUCKET/weights/clip-vit-large-patch14 \
      --config.clip_embed.vision_path=gs://BUCKET/weights/clip-vit-large-patch14 \
      --config.video_finetune.unet_path=gs://BUCKET/weights/stable-diffusion-v1-5/unet \
      --config.video_finetune.vae_path=gs://BUCKET/weights/stable-diffusion-v1-5/vae

Stages:
  mbm_pretrain  SC-MBM: masked brain modelling on resting-state fMRI
  mbm_finetune  the same on the target dataset's fMRI (stage A2), from mbm_pretrain
  clip_fit      (demo only) a small CLIP trained on the synthetic frames and captions
  clip_embed    CLIP embeddings of every caption and frame, cached once
  align         the windowed spatio-temporal encoder (from MBM) contrasted with
                CLIP text and image embeddings
  vae_fit       (demo only) a small VAE trained on the synthetic frames
  unet_fit      (demo only) a small text-to-image UNet trained on single frames: SD's part
  video_finetune  SD's UNet inflated to video (sparse-causal attention over frames i-2, i-1,
                temporal attention), fine-tuned text-to-video on the target clips; writes
                sample GIFs generated from test captions
  cotrain       the fMRI encoder's 77 tokens replace the captions; encoder and UNet attention
                trained together; writes GIFs reconstructed from test fMRI with adversarial guidance
  classifier_fit (demo only) stand-ins for the papers' ImageNet ViT and Kinetics VideoMAE:
                classifiers of the synthetic object class (per frame) and motion (per clip)
  evaluate      every test window (demo: 24) reconstructed from fMRI with adversarial guidance;
                SSIM / PSNR per frame index and per video, N-way top-1 with the image and video
                classifiers, each next to its baselines (chance, shuffled pairs, mean-fMRI
                condition); evaluate/metrics.json and evaluate/report.html. Sharded over every
                device and process; re-evaluate a trained run with --config.stages="('evaluate',)"

Presets:
  paper  the paper's sizes: ViT 24 x 1024 (16 heads, mlp ratio 1), decoder
         8 x 512, mask 0.75, AdamW lr 2.5e-4 (0.9, 0.95), wd 0.05, clip 0.8,
         batch 500, 40 warm-up epochs + cosine; window 2, projection to 77 x 768,
         20% sparsification, dropout 0.6, text + image contrastive loss.
  demo   the built-in synthetic benchmark with small models: minutes on a laptop CPU.
         It adds brainjax's caption readout (not in the paper): a linear map from the
         fMRI window onto the caption hidden states, fitted by ridge before co-training
         (align.head.readout_rank, cotrain.readout_fit; off with the no_caption_readout
         ablation, and in the paper preset).

Ablations of Table 1 (command-line overrides):
  window size        --config.data.window=1 (or 3)
  contrastive loss   --config.align.modalities="('text',)"  /  "('image',)"
                     none: --config.stages="('mbm_pretrain','clip_fit','clip_embed')"
  subject            --config.data.subjects="(1,)"
  adversarial guidance  --config.evaluate.sample.adversarial=False

Brain Netflix encoder (`brainnetflix_encoder`; Brain Netflix §4 Stage 1): MBM, then
text-only alignment at a fixed temperature 0.9, both trained JOINTLY over several
datasets and all their subjects, with a shared encoder and one patch embedding per
(dataset, subject). Add datasets to a stage with `extra_datasets`: dicts of
config.data fields that name a dataset and its `subjects` (format, inheritance and
`dataset_weights` in brainjax/stages/common.py). On the demo, with a second
synthetic dataset:
  --config.mbm_pretrain.model.per_subject_patch_embed=True
  --config.align.encoder.per_subject_patch_embed=True
  --config.mbm_pretrain.extra_datasets="({'spec': {'seed': 7, 'num_subjects': 2, 'voxels_per_subject': (1200, 1400)}, 'subjects': [0, 1]},)"
  --config.align.extra_datasets="({'spec': {'seed': 7, 'num_subjects': 2, 'voxels_per_subject': (1200, 1400)}, 'subjects': [0, 1]},)"
  --config.align.modalities="('text',)" --config.align.learn_temperature=False --config.align.temperature=0.9
(optionally --config.mbm_pretrain.dataset_weights="(1.0, 1.0)" for fixed proportions).
Per-subject rows are matched by (dataset, subject) from mbm_finetune into align;
the extra dataset's subjects start from a fresh patch embedding there.
"""

import ml_collections

from brainjax import config as cfg
from brainjax.data.pipeline import data_config
from brainjax.models.mbm import model_config
from brainjax.models import video_unet
from brainjax.stages import (align, classifier_fit, clip_embed, clip_fit, cotrain, evaluate, mbm_pretrain, unet_fit,
                             vae_fit, video_finetune)
from brainjax.train.optim import optim_config

common = cfg.sibling_recipe("common", __file__)


def _finetune(pretrain: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """MBM fine-tuning on the target subject's own training fMRI (single TRs, each repeat)."""
  stage = ml_collections.ConfigDict(pretrain.to_dict())
  stage.update(split="train", eval_split="test", init_from="stage:mbm_pretrain", **overrides)
  stage.data_overrides.update(temporal_average=1, stride=1, hrf_shift_trs=0)
  for field in ("subjects", "name", "builder_config"):  # the target dataset's own (config.data)
    if field in stage.data_overrides:
      del stage.data_overrides[field]
  return stage


def paper() -> ml_collections.ConfigDict:
  config = common.base_config()
  config.stages = ("mbm_pretrain", "mbm_finetune", "clip_embed", "align", "video_finetune", "cotrain", "evaluate")
  # cc2017 (Wen et al. 2018) for the video stages: 3 FPS, 256 x 256, reproducible voxels; HCP resting
  # state (V1-V4, every subject, MinD-Vis's ~7 s windows) for MBM. Build both once with
  #   python -m brainjax.data.build cc2017 --manual_dir=COPY_OF_PURR_RELEASE --config=mindvideo
  #   python -m brainjax.data.build hcp --manual_dir=COPY_OF_HCP_1200 --config=mindvis
  # (add --data_dir=gs://BUCKET/tfds and set --config.data.data_dir to the same).
  config.data = data_config(name="cc2017", builder_config="mindvideo", subjects=(0,), window=2, hrf_shift_trs=2,
                            voxel_padding="wrap")
  # SC-MBM (§3.2, supplement A): ViT 24 x 1024 with 16 heads and mlp ratio 1, decoder 8 x 512, patch 16,
  # mask ratio 0.75; AdamW lr 2.5e-4, betas (0.9, 0.95), weight decay 0.05, gradient clip 0.8, batch 500,
  # cosine decay after warm-up. The paper warms up for 40 epochs: warmup_steps = 40 * windows_per_epoch /
  # batch_size; 4000 assumes ~50k HCP windows (the build summary prints the count). HCP has no test split;
  # mbm_finetune reports the masked-patch correlation on cc2017's test fMRI.
  config.mbm_pretrain = mbm_pretrain.stage_config(
      eval_split="",
      model=model_config(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=1.0,
                         decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mask_ratio=0.75),
      optim=optim_config(name="adamw", lr=2.5e-4, b1=0.9, b2=0.95, weight_decay=0.05, grad_clip_norm=0.8,
                         schedule="cosine", warmup_steps=4_000),
      batch_size=500)
  config.mbm_pretrain.data_overrides.update(name="hcp", builder_config="mindvis", subjects=(), window=1,
                                            temporal_average=10, stride=10, hrf_shift_trs=0)
  config.mbm_finetune = _finetune(config.mbm_pretrain)
  # openai/clip-vit-large-patch14 (what SD 1.5 conditions on): set both paths.
  config.clip_embed = clip_embed.stage_config(text_path="", vision_path="")
  # §3.3: the windowed encoder (window 2, from MBM) with the projection to 77 x 768 (SD's condition), 20%
  # random sparsification, head dropout 0.6, the text + image CLIP losses averaged, a learned temperature.
  config.align = align.stage_config(
      init_from="stage:mbm_finetune",
      encoder=dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=1.0, remat=False,
                   per_subject_patch_embed=False),
      head=dict(out_tokens=77, out_dim=768, dropout=0.6, use_norm=False, readout_rank=0),
      modalities=("text", "image"), emb_reduction="mean", temperature=0.07, learn_temperature=True,
      sparsify_rate=0.2)
  # Supplement B: SD 1.5 inflated, 6 frames (3 FPS x 2 s) at 256 x 256, lr 2e-5, batch 14, 800 steps,
  # training attn1, attn2 and the temporal attention. Set unet_path / vae_path to a copy of SD 1.5.
  # attention_query_chunk: SD's attn1 at 32x32 has scores of [8 heads, 1024, 2048] per frame; chunks of 256
  # queries keep a quarter of them alive (bench/RESULTS.md, with remat: 12.3 -> 8.1 GB of temporaries per
  # device; same results).
  config.video_finetune = video_finetune.stage_config(
      unet_path="", vae_path="", variant="mindvideo", num_frames=6, resolution=256, remat=True,
      attention_query_chunk=256, batch_size=14, num_steps=800,
      optim=optim_config(lr=2e-5, weight_decay=0.0, warmup_steps=0, schedule="constant", grad_clip_norm=1.0),
      sample=dict(count=8, sampler="ddim", num_steps=50, guidance_scale=12.5, eta=0.0, seed=0))
  config.video_finetune.optim.trainable = [video_unet.trainable_pattern("mindvideo")]
  # Supplement B: the encoder and the UNet's attention trained together, batch 9, lr 3e-5.
  config.cotrain = cotrain.stage_config(num_frames=6, resolution=256, remat=True, attention_query_chunk=256,
                                        batch_size=9)
  config.cotrain.optim.lr = 3e-5
  # §4.3: every test window, DDIM 200 steps, adversarial guidance 12.5. Set the classifier paths to
  # copies of google/vit-base-patch16-224 and MCG-NJU/videomae-base-finetuned-kinetics ("" skips one).
  config.evaluate = evaluate.stage_config(
      max_samples=0, batch_per_device=2, image_classifier_path="", video_classifier_path="",
      sample=dict(sampler="ddim", num_steps=200, guidance_scale=12.5, eta=0.0, seed=0, adversarial=True),
      n_way=(2, 50), top_k=1, trials=100)
  return config


def demo() -> ml_collections.ConfigDict:
  config = common.base_config()
  config.stages = ("mbm_pretrain", "mbm_finetune", "clip_fit", "clip_embed", "align", "vae_fit", "unet_fit",
                   "video_finetune", "cotrain", "classifier_fit", "evaluate")
  # 32 x 32 frames with larger objects: every stage is ~4x cheaper than at 64 px and shapes stay legible.
  config.data = data_config(builder_config="demo32", subjects=(0,), window=2, hrf_shift_trs=2, voxel_padding="wrap")
  encoder = dict(embed_dim=128, depth=4, num_heads=4, mlp_ratio=1.0)
  config.mbm_pretrain = mbm_pretrain.stage_config(
      model=model_config(**encoder, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4),
      optim=optim_config(lr=1e-3, warmup_steps=50),
      batch_size=32, num_steps=200, log_every_steps=50, checkpoint_every_steps=100)
  config.mbm_pretrain.data_overrides.subjects = (0, 1, 2)
  config.mbm_finetune = _finetune(config.mbm_pretrain, num_steps=200)
  config.clip_fit = clip_fit.stage_config()
  config.clip_embed = clip_embed.stage_config()
  config.align = align.stage_config(
      init_from="stage:mbm_finetune",
      encoder=dict(patch_size=16, remat=False, **encoder),
      # 32 tokens, the demo CLIP's text length, so cotrain can fit the caption readout (below) onto them.
      head=dict(out_tokens=32, out_dim=64, dropout=0.6, use_norm=False, readout_rank=256),
      optim=optim_config(lr=3e-4, weight_decay=0.05, warmup_steps=30, grad_clip_norm=1.0),
      batch_size=32, num_steps=110, log_every_steps=50, checkpoint_every_steps=55)
  # 450 steps: the most the 20-minute budget holds (docs/results.md, "the demo's settings").
  config.vae_fit = vae_fit.stage_config(num_steps=450, checkpoint_every_steps=225)
  # Zero terminal SNR with v-prediction (Lin et al. 2024) for the from-scratch UNet. SD's schedule
  # keeps sqrt(alpha-bar) = 0.068 of the signal at t = 999; on 8 x 8 latents that lets training read
  # each clip's background off x_T, which sampling from pure noise never supplies: every sample then
  # got the same grey-blue background. With the rescale, text-to-video samples draw the captioned scene.
  schedule = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
  # No pretrained SD for the synthetic world: unet_fit trains a small text-to-image UNet on single frames
  # (SD's part), conditioned on the demo CLIP's caption hidden states (64 wide), on 8 x 8 x 4 latents.
  # Cross-attention at 4 x 4 only (8 x 8 costs 1.6x the step and drew no better); Min-SNR-5 and a high
  # learning rate because there is no pretrained prior to protect; 1000 steps, what the 20-minute budget
  # holds (longer training is what helps). The measurements: docs/results.md, "the demo's settings".
  config.unet_fit = unet_fit.stage_config(
      unet=dict(block_out_channels=(64, 128), layers_per_block=1, attention_head_dim=4,
                cross_attention_dim=64, norm_num_groups=16,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
      schedule=schedule, snr_gamma=5.0,
      optim=optim_config(lr=1e-3, weight_decay=0.0, warmup_steps=50, grad_clip_norm=1.0),
      batch_size=48, num_steps=1000, log_every_steps=100, checkpoint_every_steps=250)
  # video_finetune inflates it as it inflates SD 1.5's unet/ (sparse-causal attention, temporal attention
  # with a zero output projection) and trains every parameter on 6-frame clips.
  # The video stages train without Min-SNR weighting (snr_gamma 0, the plain v-loss): with v-prediction,
  # Min-SNR-5 weights the high-noise steps, where each frame's layout is drawn and the temporal layers must
  # read the other frames, by under 0.02 (0 at t = 999). unet_fit keeps it: single frames have no such
  # layers. The measurements: docs/results.md, "the demo's settings".
  config.video_finetune = video_finetune.stage_config(
      unet_path="stage:unet_fit/unet", vae_path="stage:vae_fit/vae", eval_vision_path="stage:clip_fit/vision",
      num_frames=6, schedule=schedule, snr_gamma=0.0,
      optim=optim_config(lr=3e-4, weight_decay=0.0, warmup_steps=20, grad_clip_norm=1.0),
      batch_size=8, num_steps=300, log_every_steps=50, checkpoint_every_steps=150,
      sample=dict(count=8, sampler="ddim", num_steps=25, guidance_scale=5.0, eta=0.0, seed=0))
  # The caption readout (brainjax's, not MinD-Video's; see models/fmri_encoder.py and stages/cotrain.py):
  # a rank-256 linear map from the fMRI window onto the captions' hidden states, fitted by ridge before
  # co-training. MinD-Video's bilinear head cannot give each caption position its own function of the
  # fMRI, and 200 co-training steps teach the UNet to ignore an unrelated condition rather than read it.
  # The "no_caption_readout" ablation runs without it. Its ridge penalty is set by what the generator makes
  # of the fit, not by the fit's error (docs/results.md, "the demo's settings").
  config.cotrain = cotrain.stage_config(
      readout_fit=dict(alpha=1e4, text_cache="stage:clip_embed"),
      num_frames=6, batch_size=8, num_steps=200, log_every_steps=50, checkpoint_every_steps=100,
      schedule=schedule, snr_gamma=0.0,
      optim=optim_config(lr=3e-4, weight_decay=0.0, warmup_steps=20, grad_clip_norm=1.0,
                         trainable=cotrain.stage_config().optim.trainable),
      sample=dict(count=8, sampler="ddim", num_steps=25, guidance_scale=5.0, eta=0.0, seed=0, adversarial=True))
  # Stand-ins for the papers' ImageNet ViT and Kinetics VideoMAE: classifiers of the synthetic object
  # class (per frame) and motion (per clip), saved in the transformers layout and read like the real ones.
  config.classifier_fit = classifier_fit.stage_config()
  # 24 test windows spread over the test clips; DDIM 25 with adversarial guidance (DDIM 50 and DPM-Solver++
  # 15 scored the same: docs/results.md). The "caption" baseline
  # (video_finetune's UNet on the true captions) shows what the generator makes of a perfect condition,
  # "ridge" what it makes of a linear decoder's (ridge from the fMRI, no encoder, no co-training).
  # object_motion: the synthetic object tracked in every frame, its step per frame and how often it moves the
  # real way (brainjax.eval.motion); the motion classifier alone cannot tell jitter from a wrong direction.
  config.evaluate = evaluate.stage_config(
      max_samples=24, batch_per_device=4, baselines=("shuffled", "mean_fmri", "caption", "ridge"),
      sample=dict(sampler="ddim", num_steps=25, guidance_scale=5.0, eta=0.0, seed=0, adversarial=True),
      image_classifier_path="stage:classifier_fit/image_classifier",
      video_classifier_path="stage:classifier_fit/video_classifier",
      n_way=(2, 50), top_k=1, trials=100, report=dict(clips_per_subject=12), object_motion=True)
  # python -m brainjax.ablate --config=configs/mindvideo.py:demo --workdir=DIR runs these.
  config.ablations = ml_collections.ConfigDict({
      "window1": ["data.window=1"],
      "window3": ["data.window=3"],
      "text_only": ["align.modalities=('text',)"],
      "image_only": ["align.modalities=('image',)"],
      "no_sparsify": ["align.sparsify_rate=0.0"],
      "no_adversarial_guidance": ["evaluate.sample.adversarial=False"],
      # brainjax's caption readout off: MinD-Video's head alone conditions co-training.
      "no_caption_readout": ["cotrain.readout_fit.alpha=0.0", "align.head.readout_rank=0"],
  })
  return config


def get_config(preset: str = "paper") -> ml_collections.ConfigDict:
  return cfg.select_preset(preset, {"paper": paper, "demo": demo}, "mindvideo")
