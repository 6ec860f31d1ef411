"""The Zeroscope-layout UNet3DConditionModel both UNet3D benchmarks use, in diffusers (PyTorch) and in brainjax.

One small-but-real configuration (Zeroscope's blocks, narrower), one set of weights:
the diffusers model is built with a fixed seed, its zero-initialised tensors (the
temporal convs' last stage, biases) are filled with small random values so every
path carries signal, it is saved with `save_pretrained`, and brainjax loads that
directory with `brainjax.models.unet3d.load_unet3d` (its diffusers converter).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import numpy as np

CD, D, CU, U = "CrossAttnDownBlock3D", "DownBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"


def add_model_args(p: argparse.ArgumentParser, *, batch: int = 1, latent: int = 32) -> None:
  p.add_argument("--channels", default="64,128,256,256", help="block_out_channels (zeroscope: 320,640,1280,1280)")
  p.add_argument("--layers", type=int, default=1, help="layers_per_block (zeroscope: 2)")
  p.add_argument("--head_dim", type=int, default=32, help="attention_head_dim, the width of each head (zeroscope: 64)")
  p.add_argument("--cross_dim", type=int, default=256, help="cross_attention_dim (zeroscope: 1024)")
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--latent", type=int, default=latent, help="latent height = width (zeroscope: 40 x 72)")
  p.add_argument("--context_len", type=int, default=77)
  p.add_argument("--batch", type=int, default=batch)
  p.add_argument("--attention_query_chunk", type=int, default=0,
                 help="brainjax only: spatial attention queries per chunk (unet.query_chunked_attention); 0: all")


def diffusers_kwargs(args: argparse.Namespace) -> dict:
  channels = tuple(int(c) for c in args.channels.split(","))
  n = len(channels)
  return dict(block_out_channels=channels, down_block_types=(CD,) * (n - 1) + (D,),
              up_block_types=(U,) + (CU,) * (n - 1), layers_per_block=args.layers,
              attention_head_dim=args.head_dim, cross_attention_dim=args.cross_dim, norm_num_groups=32)


def describe(args: argparse.Namespace, num_params: int) -> str:
  kw = diffusers_kwargs(args)
  return (f"UNet3DConditionModel (zeroscope's blocks): block_out_channels {kw['block_out_channels']}, "
          f"{args.layers} layers per block, heads {args.head_dim} wide, cross-attention {args.cross_dim}; "
          f"{num_params / 1e6:.1f} M params; latents [{args.batch}, {args.frames}, {args.latent}, {args.latent}, 4], "
          f"condition [{args.batch}, {args.context_len}, {args.cross_dim}]"
          + (f"; brainjax attention queries in chunks of {args.attention_query_chunk}"
             if getattr(args, "attention_query_chunk", 0) else ""))


def make_pair(args: argparse.Namespace, seed: int = 0):
  """(torch model, brainjax module, brainjax params) with identical weights."""
  import torch
  from diffusers import UNet3DConditionModel
  from diffusers.utils import logging as diffusers_logging

  from brainjax.models import unet, unet3d

  diffusers_logging.set_verbosity_error()
  torch.manual_seed(seed)
  model = UNet3DConditionModel(sample_size=args.latent, **diffusers_kwargs(args))
  with torch.no_grad():
    for p in model.parameters():
      if not p.any():
        fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
        p.copy_(torch.randn_like(p) * (0.1 / np.sqrt(fan_in) if p.ndim > 1 else 0.01))
  with tempfile.TemporaryDirectory() as directory:
    model.save_pretrained(directory)
    module, params = unet3d.load_unet3d(
        directory, parts=unet.UNetParts(attention_query_chunk=getattr(args, "attention_query_chunk", 0)))
  return model, module, params


def without_chunks(module):
  """The same brainjax UNet with its attention unchunked: what FLOPs are counted on, because XLA's cost
  analysis counts a loop body once and the chunked attention is a loop over the chunks."""
  return module.clone(parts=dataclasses.replace(module.parts, attention_query_chunk=0))


def to_torch(x: np.ndarray):
  """[B, T, H, W, C] (brainjax) -> a torch tensor [B, C, T, H, W] (diffusers)."""
  import torch
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 4, 1, 2, 3)))


def from_torch(x) -> np.ndarray:
  """[B, C, T, H, W] -> [B, T, H, W, C]."""
  return np.asarray(x.detach().cpu().numpy()).transpose(0, 2, 3, 4, 1)
