"""Each recipe's demo runs end to end on a tiny slice (all its stages, seconds each)."""

import json

import pytest
from etils import epath

from brainjax import runner
from tests import helpers

pytestmark = pytest.mark.slow


def test_mindvideo_demo_stages_end_to_end(tmp_path):
  config = helpers.tiny_mindvideo_config(str(tmp_path / "data"))
  summaries = runner.run(config, str(tmp_path / "run"))
  assert list(summaries) == ["mbm_pretrain", "mbm_finetune", "clip_fit", "clip_embed", "align"]
  assert summaries["clip_embed"]["test_records"] == 40
  assert 0.0 <= summaries["align"]["fmri_to_image_top1"] <= 1.0
  workdir = epath.Path(tmp_path / "run")
  for stage in summaries:
    assert json.loads((workdir / stage / "DONE.json").read_text())["wall_time_s"] > 0
  # The demo's own CLIP is saved in the transformers layout and reloads with transformers.
  import transformers
  model = transformers.CLIPTextModelWithProjection.from_pretrained(str(workdir / "clip_fit" / "text"))
  assert model.config.projection_dim == config.clip_fit.text.projection_dim
