"""Small PyTorch models equivalent to the originals brainjax converts from and to.

Written from the published definitions (not copied), with the same module
names so that their `state_dict()` keys are the originals':

  ViT `Block` (timm's vision_transformer layout: norm1, attn.{qkv,proj}, norm2,
  mlp.{fc1,fc2}; qkv with bias; exact GELU; plain `nn.LayerNorm`, eps 1e-5,
  as MinD-Vis and MindVideo pass it)
  `MaskedAutoencoderFmri`   MinD-Vis' MAEforFMRI (code/sc_mbm/mae_for_fmri.py),
                            with the masking noise passed in so brainjax and
                            PyTorch can mask the same patches
  `FmriEncoderTorch`        MindVideo's fMRIEncoder (src/MindVideo/models/
                            fmri_encoder.py): BlockTemp spatio-temporal blocks
                            and ProjectionHead

They serve the parity tests and the benchmark; they are not part of brainjax.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TORCH_LN_EPS = 1e-5  # nn.LayerNorm's default, what both originals use


def sincos_table(dim: int, num_patches: int, *, cls_row: bool = True, float32_math: bool = False) -> np.ndarray:
  """1-D sin-cos positions [(1+)N, dim]: sin half then cos half, a zero row for the cls token.

  MinD-Vis computes the frequencies in float64 (np.float); MindVideo's copy in
  float32 (`float32_math=True`). Both are stored as float32.
  """
  dtype = np.float32 if float32_math else np.float64
  freqs = 1.0 / 10000 ** (np.arange(dim // 2, dtype=dtype) / dtype(dim / 2.0))
  angles = np.outer(np.arange(num_patches, dtype=np.float32).astype(dtype), freqs)
  table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  if cls_row:
    table = np.concatenate([np.zeros((1, dim)), table], axis=0)
  return table.astype(np.float32)


class Attention(nn.Module):
  """Multi-head self-attention with one fused qkv projection (timm layout)."""

  def __init__(self, dim: int, num_heads: int, *, fused: bool = False):
    super().__init__()
    self.num_heads = num_heads
    self.fused = fused  # torch's scaled_dot_product_attention (what current timm runs) or explicit math
    self.qkv = nn.Linear(dim, 3 * dim, bias=True)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    head_dim = d // self.num_heads
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    if self.fused:
      out = F.scaled_dot_product_attention(q, k, v)
    else:
      weights = (q @ k.transpose(-2, -1) * head_dim ** -0.5).softmax(dim=-1)
      out = weights @ v
    return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()  # exact (erf) GELU, timm's default
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  """Pre-norm ViT block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, eps: float = TORCH_LN_EPS, fused: bool = False):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = Attention(dim, num_heads, fused=fused)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class BlockTemp(nn.Module):
  """MindVideo's spatio-temporal block: spatial attention, attention across the window, MLP."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, eps: float = TORCH_LN_EPS):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = Attention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.attn_temp = Attention(dim, num_heads)
    self.norm_temp = nn.LayerNorm(dim, eps=eps)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x: torch.Tensor, window: int) -> torch.Tensor:
    bw, n, d = x.shape  # volumes of a window are consecutive rows: (b w) n d
    x = x + self.attn(self.norm1(x))
    t = x.reshape(bw // window, window, n, d).transpose(1, 2).reshape(-1, window, d)  # (b n) w d
    t = t + self.attn_temp(self.norm_temp(t))
    x = t.reshape(bw // window, n, window, d).transpose(1, 2).reshape(bw, n, d)
    return x + self.mlp(self.norm2(x))


class PatchEmbed1D(nn.Module):
  """Voxels [B, 1, V] -> tokens [B, V/P, D] by a Conv1d with kernel = stride = P."""

  def __init__(self, patch_size: int, embed_dim: int):
    super().__init__()
    self.proj = nn.Conv1d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.proj(x).transpose(1, 2)


def _fixed(table: np.ndarray) -> nn.Parameter:
  # A parameter that is not trained, as the originals declare their positions.
  return nn.Parameter(torch.from_numpy(table)[None], requires_grad=False)


class MaskedAutoencoderFmri(nn.Module):
  """MinD-Vis' MAEforFMRI: MAE over 1-D voxel patches; one mlp_ratio for encoder and decoder."""

  def __init__(self, num_voxels: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
               decoder_embed_dim: int, decoder_depth: int, decoder_num_heads: int, mlp_ratio: float,
               *, eps: float = TORCH_LN_EPS, fused: bool = False):
    super().__init__()
    n = num_voxels // patch_size
    self.patch_size = patch_size
    self.patch_embed = PatchEmbed1D(patch_size, embed_dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = _fixed(sincos_table(embed_dim, n))
    self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, eps=eps, fused=fused)
                                 for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim, eps=eps)
    self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
    self.decoder_pos_embed = _fixed(sincos_table(decoder_embed_dim, n))
    self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, eps=eps, fused=fused)
                                         for _ in range(decoder_depth)])
    self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=eps)
    self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size)

  @staticmethod
  def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    """MAE's per-sample shuffle: keep the int(L*(1-ratio)) tokens with the lowest noise."""
    b, length, d = x.shape
    keep = int(length * (1 - mask_ratio))
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    kept = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, d))
    mask = torch.ones(b, length)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, restore), restore

  def forward_encoder(self, voxels: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    x = self.patch_embed(voxels) + self.pos_embed[:, 1:]
    x, mask, restore = self.random_masking(x, mask_ratio, noise)
    cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for block in self.blocks:
      x = block(x)
    return self.norm(x), mask, restore

  def forward_decoder(self, x: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
    x = self.decoder_embed(x)
    masks = self.mask_token.expand(x.shape[0], restore.shape[1] + 1 - x.shape[1], -1)
    body = torch.cat([x[:, 1:], masks], dim=1)
    body = torch.gather(body, 1, restore[..., None].expand(-1, -1, x.shape[2]))
    x = torch.cat([x[:, :1], body], dim=1) + self.decoder_pos_embed
    for block in self.decoder_blocks:
      x = block(x)
    return self.decoder_pred(self.decoder_norm(x))[:, 1:]

  def forward(self, voxels: torch.Tensor, noise: torch.Tensor, mask_ratio: float = 0.75):
    """voxels [B, 1, V] (or [B, V]); noise [B, V/P] decides the mask. -> (loss, pred, mask, latent)."""
    if voxels.ndim == 2:
      voxels = voxels[:, None]
    latent, mask, restore = self.forward_encoder(voxels, mask_ratio, noise)
    pred = self.forward_decoder(latent, restore)
    target = voxels.reshape(voxels.shape[0], -1, self.patch_size)
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    loss = (per_patch * mask).sum() / mask.sum()
    return loss, pred, mask, latent


class ProjectionHead(nn.Module):
  """MindVideo's head: token-axis linear map, projection, GELU -> fc -> dropout, residual, optional norm."""

  def __init__(self, in_channel: int, out_channel: int, in_dim: int, out_dim: int, *, dropout: float = 0.0,
               use_norm: bool = False, eps: float = TORCH_LN_EPS):
    super().__init__()
    self.projection = nn.Linear(in_dim, out_dim, bias=False)
    self.gelu = nn.GELU()
    self.fc = nn.Linear(out_dim, out_dim, bias=False)
    self.dropout = nn.Dropout(dropout)
    self.layer_norm = nn.LayerNorm(out_dim, eps=eps) if use_norm else nn.Identity()
    self.channel_mapper = nn.Linear(in_channel, out_channel, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.channel_mapper(x.transpose(1, 2)).transpose(1, 2)
    projected = self.projection(x)
    return self.layer_norm(projected + self.dropout(self.fc(self.gelu(projected))))


class FmriEncoderTorch(nn.Module):
  """MindVideo's fMRIEncoder: [B, w, V] -> [B, out_channel, out_dim].

  Each volume is embedded separately (positions without the cls row; no cls
  token is prepended), blocks are BlockTemp when use_temp_attn else plain, the
  w volumes' tokens are concatenated and the projection head maps them.
  """

  def __init__(self, num_voxels: int, patch_size: int = 16, embed_dim: int = 1024, depth: int = 24,
               num_heads: int = 16, mlp_ratio: float = 4.0, out_channel: int = 1, out_dim: int = 768,
               use_norm: bool = False, dropout: float = 0.0, window_size: int = 1, use_temp_attn: bool = False,
               logit_scale_init_value: float = 1.0, in_chans: int = 1, **unused):
    super().__init__()
    del in_chans, unused
    n = num_voxels // patch_size
    self.window_size, self.use_temp_attn = window_size, use_temp_attn
    self.patch_embed = PatchEmbed1D(patch_size, embed_dim)
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.pos_embed = _fixed(sincos_table(embed_dim, n, float32_math=True))
    block = BlockTemp if use_temp_attn else Block
    self.blocks = nn.ModuleList([block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.proj_head = ProjectionHead(n * window_size, out_channel, embed_dim, out_dim, dropout=dropout,
                                    use_norm=use_norm)
    self.logit_scale = nn.Parameter(torch.ones([]) * logit_scale_init_value)

  def forward(self, fmri: torch.Tensor) -> torch.Tensor:
    b, w, v = fmri.shape
    x = self.patch_embed(fmri.reshape(b * w, 1, v)) + self.pos_embed[:, 1:]
    for block in self.blocks:
      x = block(x, w) if self.use_temp_attn else block(x)
    x = self.norm(x)
    return self.proj_head(x.reshape(b, w * x.shape[1], x.shape[2]))


def randomize_(module: nn.Module, seed: int, scale: float = 0.2) -> nn.Module:
  """Fills every trainable parameter with noise (norm scales around 1), so every weight is exercised."""
  gen = torch.Generator().manual_seed(seed)
  norms = {id(m.weight) for m in module.modules() if isinstance(m, nn.LayerNorm)}
  with torch.no_grad():
    for p in module.parameters():
      if p.requires_grad:
        p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if id(p) in norms else 0.0))
  return module


def write_mindvideo_encoder_folder(directory, config: dict, module: nn.Module) -> None:
  """What MindVideo's release ships for its fMRI encoder: config.json and a pickled {'model': state_dict}."""
  import io
  import json

  from etils import epath
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(config))
  buffer = io.BytesIO()
  torch.save({"model": module.state_dict()}, buffer)
  (directory / "model.pth").write_bytes(buffer.getvalue())


def save_pretrained(path, model):
  """`model.save_pretrained(path)` (a diffusers / transformers model); returns `path`."""
  model.save_pretrained(path)
  return path


def randomize_norms_(model: nn.Module) -> nn.Module:
  """Random affine params for every norm (torch's init leaves them at identity, which a test cannot see past)."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
  return model


def nchw(x) -> torch.Tensor:
  """An NHWC array as a torch NCHW tensor."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
  """A torch NCHW tensor as an NHWC array."""
  return x.detach().numpy().transpose(0, 2, 3, 1)
