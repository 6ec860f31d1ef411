"""Test setup: 8 simulated CPU devices, so sharding is exercised without hardware."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import fsspec  # noqa: E402
import pytest  # noqa: E402
from etils.epath import backend as epath_backend  # noqa: E402
from fsspec.implementations.local import LocalFileSystem  # noqa: E402


@pytest.fixture
def fake_gcs(tmp_path):
  """Serves gs://bucket/... from <tmp>/gcs/bucket/... through fsspec, as gcsfs would.

  Everything brainjax reads or writes through etils.epath (workdir files,
  metrics, checkpoint directories in the diffusers/transformers layout) then
  runs against a local stand-in for GCS.
  """
  root = str(tmp_path / "gcs")
  os.makedirs(root)

  class LocalGcs(LocalFileSystem):
    protocol = ("gs", "gcs")

    def __init__(self, *args, finalize_on_close=False, **kwargs):
      del finalize_on_close
      super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
      path = str(path).removeprefix("gs://").removeprefix("gcs://")
      return path if path.startswith(root) else os.path.join(root, path)

  fsspec.register_implementation("gcs", LocalGcs, clobber=True)
  fsspec.register_implementation("gs", LocalGcs, clobber=True)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  yield root
  epath_backend.fsspec_backend._get_filesystem.cache_clear()


@pytest.fixture(scope="session")
def video_run(tmp_path_factory):
  """The tiny video recipe trained through cotrain once per session: (config, workdir, summaries).
  Read-only for its users (test_video_stages, test_evaluate): they copy or link, never write into it."""
  from tests.helpers import train_video_stages
  return train_video_stages(tmp_path_factory.mktemp("video"))
