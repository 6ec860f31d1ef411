"""Caption tokenizers: CLIP's BPE from a checkpoint, or a word vocabulary for the synthetic captions.

Both give fixed-length id arrays (`max_length`, 77 for Stable Diffusion's
text encoder) framed as <bos> tokens <eos> <pad>..., plus a 0/1 attention mask.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence

import numpy as np
from etils import epath

WORD_VOCAB_FILE = "brainjax_word_vocab.json"


class WordTokenizer:
  """Whole-word vocabulary (the synthetic captions use a few dozen words).

  Ids: 0 <pad>, words..., then <bos>, <eos>; <eos> has the largest id so both
  of CLIP's pooling rules (argmax of ids, or first <eos>) pick it.
  """

  def __init__(self, words: Sequence[str], max_length: int = 77):
    self.words = list(words)
    self.ids = {w: i + 1 for i, w in enumerate(self.words)}
    self.pad_id, self.bos_id, self.eos_id = 0, len(self.words) + 1, len(self.words) + 2
    self.vocab_size = len(self.words) + 3
    self.max_length = max_length

  @staticmethod
  def split(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\.", text.lower())

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
    for row, text in enumerate(texts):
      words = self.split(text)
      unknown = [w for w in words if w not in self.ids]
      if unknown:
        raise ValueError(f"words {sorted(set(unknown))} are not in the tokenizer's vocabulary (caption {text!r}); "
                         "the word tokenizer only covers the synthetic benchmark's captions.")
      tokens = [self.bos_id] + [self.ids[w] for w in words][: self.max_length - 2] + [self.eos_id]
      ids[row, : len(tokens)] = tokens
    return ids, (ids != self.pad_id).astype(np.int32)

  def save(self, directory: epath.PathLike) -> None:
    path = epath.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / WORD_VOCAB_FILE).write_text(json.dumps({"words": self.words, "max_length": self.max_length}))

  @classmethod
  def for_synthetic_captions(cls, max_length: int = 32) -> "WordTokenizer":
    from brainjax.data import synthetic
    words = set()
    for combo in itertools.product(*(range(len(x)) for x in (synthetic.CLASSES, synthetic.COLOURS,
                                                             synthetic.DIRECTIONS, synthetic.SPEEDS,
                                                             synthetic.SCENES))):
      words.update(cls.split(synthetic.clip_caption(*combo)))
    words.update(["then", "."])
    return cls(sorted(words), max_length)


class BpeTokenizer:
  """CLIP's tokenizer from a checkpoint's `tokenizer.json` (Hugging Face `tokenizers`)."""

  def __init__(self, path: epath.PathLike, max_length: int = 77):
    from tokenizers import Tokenizer
    file = epath.Path(path) / "tokenizer.json"
    if not file.exists():
      raise FileNotFoundError(f"{file} does not exist: a CLIP text checkpoint directory (e.g. a copy of "
                              "openai/clip-vit-large-patch14 or SD 1.5's tokenizer/) must contain tokenizer.json.")
    self._tok = Tokenizer.from_str(file.read_text())
    self.max_length = max_length
    self._tok.enable_truncation(max_length)
    vocab = self._tok.get_vocab()
    eos = "<|endoftext|>" if "<|endoftext|>" in vocab else None
    self.pad_id = vocab.get("<|endoftext|>", 0) if eos else 0
    self._tok.enable_padding(length=max_length, pad_id=self.pad_id)

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = self._tok.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in encoded], np.int32)
    mask = np.asarray([e.attention_mask for e in encoded], np.int32)
    return ids, mask


def load_tokenizer(directory: epath.PathLike, max_length: int = 77):
  """The tokenizer stored with a text tower: brainjax's word vocabulary or CLIP's BPE."""
  path = epath.Path(directory)
  if (path / WORD_VOCAB_FILE).exists():
    spec = json.loads((path / WORD_VOCAB_FILE).read_text())
    return WordTokenizer(spec["words"], spec["max_length"])
  return BpeTokenizer(path, max_length)
