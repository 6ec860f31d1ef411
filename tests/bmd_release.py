"""A miniature BOLD Moments release in the real layout (datasets.md §3, §8.3), for the builder tests
(tests/data/test_builder_bmd.py, tests/cli/test_build_cli.py): organised-beta pickles (tuple of [N, R, G] betas +
'vidNNNN' ids), annotations.json, stimuli/{train,test}/NNNN.mp4, a Glasser dlabel."""

import json
import pickle

import numpy as np
from etils import epath

from brainjax.data import video
from data_builders import bmd
from tests import release_files as rf

MESH = 16
LEFT, RIGHT = list(range(8)), list(range(8))  # cortex columns 0..7 (left), 8..15 (right); 4 subcortical after
G = 16 + 4
ROIS = {"V1": ([0, 1], [8]), "MT": ([3], [10, 11]), "V2": ([5], [12])}  # atlas columns (= pickle columns)
KEPT = [0, 1, 3, 8, 10, 11]  # V1 + MT, both hemispheres, ascending
TRAIN, TEST = [1, 2, 3], [4, 5]  # videos 0001..0003 train, 0004..0005 test
REPEATS = {"train": 3, "test": 4}
MISSING = ("02", "train", 2, 1)  # sub-02 did not see repeat 1 of video 0002 (NaN in the release)


def options(**overrides):
  base = dict(subjects=("01", "02"), rois=("V1", "MT"), atlas="atlas.dlabel.nii", grayordinates=G,
              num_train_videos=3, num_test_videos=2, train_repeats=3, test_repeats=4, fps=2.0, frame_size=8)
  base.update(overrides)
  return base


def beta_value(subject: int, number: int, repeat: int, column: int) -> float:
  return subject * 1000 + number * 10 + repeat + column / 100


def write_release(root, *, grayordinates=G):
  root = epath.Path(root)
  bm = rf.tiny_brain_models(LEFT, RIGHT, MESH)  # the atlas covers the cortex only, like the BALSA file
  rf.tiny_glasser(root / "atlas.dlabel.nii", bm, ROIS)
  rng = np.random.default_rng(0)
  for subject in (1, 2):
    for split, numbers in (("train", TRAIN), ("test", TEST)):
      betas = np.array([[[beta_value(subject, n, r, g) for g in range(grayordinates)] for r in range(REPEATS[split])]
                        for n in numbers], np.float64)
      if (f"{subject:02d}", split) == MISSING[:2]:
        betas[numbers.index(MISSING[2]), MISSING[3]] = np.nan
      order = rng.permutation(len(numbers))  # rows stored out of order: the ids, not the row index, name the video
      path = root / bmd.bmd_dataset_builder.beta_pickle(epath.Path(bmd.bmd_dataset_builder.GLM_DIR), f"{subject:02d}",
                                                        split)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(pickle.dumps((betas[order], [f"vid{numbers[i]:04d}" for i in order])))
  annotations = {f"{n:04d}": {"set": "train" if n in TRAIN else "test",
                              "text_descriptions": [f"video {n} sentence {j}" for j in range(5 + n % 2)]}
                 for n in TRAIN + TEST}
  (root / bmd.bmd_dataset_builder.ANNOTATIONS).parent.mkdir(parents=True, exist_ok=True)
  (root / bmd.bmd_dataset_builder.ANNOTATIONS).write_text(json.dumps(annotations))
  for split, numbers in (("train", TRAIN), ("test", TEST)):
    for n in numbers:
      frames = np.full((30, 8, 8, 3), 20 * n, np.uint8)  # 3 s at 10 fps, colour = video number
      frames[15:, ..., 1] = 200  # second half marked, to check the 3-s window is read whole
      video.write_mp4(root / "stimuli" / split / f"{n:04d}.mp4", frames, 10)
  return root
