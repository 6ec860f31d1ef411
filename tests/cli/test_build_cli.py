"""`python -m brainjax.data.build`: builds, skips a finished build, cleans an interrupted one, summarises."""

import io
import os
import subprocess
import sys

import pytest

import data_builders
from brainjax.data import build
from data_builders import bmd
from tests import bmd_release as tiny_bmd


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  return tiny_bmd.write_release(tmp_path_factory.mktemp("bmd_release"))


def _run(release, data_dir, **kw):
  out = io.StringIO()
  config = bmd.BmdConfig(name="tiny", **tiny_bmd.options())
  builder = build.run("bmd", manual_dir=os.fspath(release), data_dir=os.fspath(data_dir), config=config, out=out,
                      **kw)
  return builder, out.getvalue()


def test_build_summary_skip_and_resume(release, tmp_path):
  builder, out = _run(release, tmp_path)
  assert builder.is_prepared() and "built in" in out and "records/s" in out
  assert "train: 3 records in 3 segments, repeats 3 (sub-01 3, sub-02 3)" in out
  assert "test: 2 records in 2 segments, repeats 4 (sub-01 2, sub-02 2)" in out
  assert "voxels: sub-01 6, sub-02 6" in out
  _, again = _run(release, tmp_path)
  assert again.startswith("already built, skipping") and "built in" not in again
  # An interrupted build leaves an incomplete.* folder: removed, then built again from scratch.
  leftover = tmp_path / "brainjax_bmd" / "tiny" / "incomplete.ABC123_1.0.0"
  leftover.mkdir()
  (leftover / "brainjax_bmd-train.array_record-00000-of-00001").write_bytes(b"partial")
  _, rebuilt = _run(release, tmp_path, overwrite=True)
  assert "--overwrite: removed" in rebuilt and "leftovers of an interrupted build" in rebuilt
  assert not leftover.exists() and "built in" in rebuilt


def test_cli_errors(tmp_path, capsys):
  assert build.main(["bmd", f"--data_dir={tmp_path}"]) == 2
  assert "--manual_dir is required" in capsys.readouterr().err
  assert build.main(["bmd", f"--manual_dir={tmp_path}", "--config=nope"]) == 1
  assert "configs are ['brain_netflix', 'all_grayordinates']" in capsys.readouterr().err
  assert build.main(["bmd", f"--manual_dir={tmp_path / 'missing'}", f"--data_dir={tmp_path}"]) == 1
  assert "does not exist" in capsys.readouterr().err
  assert not list(tmp_path.rglob("*.array_record*"))


def test_registry_and_module_entry_point():
  assert data_builders.NAMES == ("synthetic", "cc2017", "hcp", "bmd", "had", "cinebrain")
  assert data_builders.builder_class("bmd").name == "brainjax_bmd"
  assert data_builders.builder_config_names("cinebrain") == ["visual", "full", "visual_eeg"]
  with pytest.raises(ValueError, match="unknown dataset 'nsd'"):
    data_builders.builder_class("nsd")
  done = subprocess.run([sys.executable, "-m", "brainjax.data.build", "--help"], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  assert done.returncode == 0 and "--manual_dir" in done.stdout
