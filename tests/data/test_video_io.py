"""brainjax.data.video: mp4 reading/writing for the real dataset builders.

The test videos encode each frame's index in its pixel values (frame k is
grey level 2k), so the frame a resampling picks can be read back exactly.
"""

import math

import numpy as np
import pytest

from brainjax.data import video
from data_builders.common import ReleaseError

NATIVE_FPS = 30
NUM_FRAMES = 90  # 3 s at 30 fps


def _indexed_frames(count=NUM_FRAMES, height=16, width=20):
  frames = np.zeros((count, height, width, 3), np.uint8)
  for k in range(count):
    frames[k] = 2 * k
  return frames


def _indices(frames):
  """The source frame index each returned frame encodes."""
  values = frames[:, 0, 0, 0].astype(int)
  assert (frames == frames[:, :1, :1, :1]).all(), "frames should be flat"
  return values // 2


@pytest.fixture(scope="module")
def indexed_mp4(tmp_path_factory):
  path = tmp_path_factory.mktemp("video") / "indexed.mp4"
  video.write_mp4(path, _indexed_frames(), NATIVE_FPS)
  return path


def test_lossless_round_trip_and_info(indexed_mp4):
  frames = video.read_video(indexed_mp4)
  np.testing.assert_array_equal(frames, _indexed_frames())
  assert video.video_info(indexed_mp4) == (30.0, 90, 16, 20)


def test_lossy_write_is_close(tmp_path):
  rng = np.random.default_rng(0)
  frames = np.repeat(np.repeat(rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8), 4, axis=1), 4, axis=2)
  path = video.write_mp4(tmp_path / "lossy.mp4", frames, 10, lossless=False)
  back = video.read_video(path)
  assert back.shape == frames.shape
  assert np.abs(back.astype(int) - frames).mean() < 12
  with pytest.raises(ValueError, match="even"):
    video.write_mp4(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8), 10, lossless=False)


def test_cc2017_tr_window_at_3_fps_picks_every_tenth_frame(indexed_mp4):
  # TR 0 of a 1-s-TR movie would be [0, 1); here the window [1, 3) s at 3 fps -> source frames 30, 40, ..., 80.
  frames = video.read_video(indexed_mp4, fps=3, start_s=1.0, duration_s=2.0)
  assert frames.shape == (6, 16, 20, 3)
  np.testing.assert_array_equal(_indices(frames), [30, 40, 50, 60, 70, 80])


def test_whole_video_at_3_fps(indexed_mp4):
  np.testing.assert_array_equal(_indices(video.read_video(indexed_mp4, fps=3)), np.arange(0, 90, 10))


@pytest.mark.parametrize("fps", [7, 12, 24, 60])
def test_resampling_is_nearest_timestamp_ties_to_earlier(indexed_mp4, fps):
  frames = video.read_video(indexed_mp4, fps=fps)
  times = np.arange(len(frames)) / fps
  # nearest source frame, an exact tie (fps 12: t = 1/12 between frames 2 and 3) going to the earlier one
  expected = np.minimum(np.ceil(times * NATIVE_FPS - 0.5 - 1e-9), NUM_FRAMES - 1).astype(int)
  np.testing.assert_array_equal(_indices(frames), expected)
  # the video lasts 3 s: targets up to its end (last frame shown until 3.0 s)
  assert len(frames) == math.ceil(3.0 * fps - 1e-9)
  if fps == 12:
    assert _indices(frames)[1] == 2  # tie -> frame on screen at 1/12 s
  if fps == 60:
    np.testing.assert_array_equal(_indices(frames)[:6], [0, 0, 1, 1, 2, 2])


def test_native_rate_interval(indexed_mp4):
  frames = video.read_video(indexed_mp4, start_s=0.5, duration_s=0.5)
  np.testing.assert_array_equal(_indices(frames), np.arange(15, 30))


def test_requesting_past_the_end_fails(indexed_mp4):
  with pytest.raises(ReleaseError, match="indexed.mp4: the video ends at 3.000 s"):
    video.read_video(indexed_mp4, fps=3, start_s=2.0, duration_s=2.0)
  with pytest.raises(ReleaseError, match="no video frame"):
    video.read_video(indexed_mp4, start_s=5.0)


def test_centre_crop_and_resize(tmp_path):
  # 16 x 24 frames: left 4 columns red, right 4 blue, centre 16 columns green; the centred square is the green part.
  frame = np.zeros((16, 24, 3), np.uint8)
  frame[:, :4] = (255, 0, 0)
  frame[:, 4:20] = (0, 255, 0)
  frame[:, 20:] = (0, 0, 255)
  frame[0, 4] = (255, 255, 255)  # marks the crop's top-left corner
  path = video.write_mp4(tmp_path / "wide.mp4", np.stack([frame] * 3), 30)
  exact = video.read_video(path, size=16)
  assert exact.shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(exact[0], frame[:, 4:20])
  small = video.read_video(path, size=8)
  assert small.shape == (3, 8, 8, 3)
  # no red or blue leaks in from the cropped-away sides
  assert small[..., 0][:, 2:, :].max() == 0 and small[..., 2].max() <= 64
  assert (small[:, 2:, :, 1] == 255).all()
  # portrait frames crop rows instead
  tall = np.zeros((24, 16, 3), np.uint8)
  tall[4:20] = 200
  np.testing.assert_array_equal(video.read_video(video.write_mp4(tmp_path / "tall.mp4", tall[None], 30), size=16)[0],
                                tall[4:20])


def test_missing_file_is_named(tmp_path):
  with pytest.raises(ReleaseError, match=r"nothere\.mp4: video file not found"):
    video.read_video(tmp_path / "nothere.mp4")
  with pytest.raises(ReleaseError, match="not found"):
    video.video_info(tmp_path / "nothere.mp4")


def test_corrupt_and_empty_files_are_named(tmp_path, indexed_mp4):
  garbage = tmp_path / "garbage.mp4"
  garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  with pytest.raises(ReleaseError, match=r"garbage\.mp4: not a readable video"):
    video.read_video(garbage)
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  with pytest.raises(ReleaseError, match=r"empty\.mp4"):
    video.read_video(empty)
  truncated = tmp_path / "truncated.mp4"
  truncated.write_bytes(indexed_mp4.read_bytes()[:2000])
  with pytest.raises(ReleaseError, match=r"truncated\.mp4"):
    video.read_video(truncated, fps=3)
  with pytest.raises(ReleaseError, match=r"garbage\.mp4"):
    video.video_info(garbage)


def test_remote_paths_read_through_epath_file_objects(indexed_mp4, monkeypatch):
  # gs:// paths cannot be opened by name: they go through epath's seekable file object. Force that branch on a
  # local stand-in and check the same frames come back.
  opened = []
  monkeypatch.setattr(video, "_is_local", lambda path: opened.append(path) or False)
  frames = video.read_video(str(indexed_mp4), fps=3)
  assert opened and _indices(frames).tolist() == list(range(0, 90, 10))
  assert video.video_info(indexed_mp4)[1] == NUM_FRAMES


def test_bad_options_name_the_argument(indexed_mp4):
  with pytest.raises(ValueError, match="fps"):
    video.read_video(indexed_mp4, fps=0)
  with pytest.raises(ValueError, match="size"):
    video.read_video(indexed_mp4, size=0)
  with pytest.raises(ValueError, match="duration_s"):
    video.read_video(indexed_mp4, duration_s=-1.0)
  with pytest.raises(ValueError, match="uint8"):
    video.write_mp4(indexed_mp4.parent / "x.mp4", np.zeros((2, 4, 4, 3), np.float32), 30)
