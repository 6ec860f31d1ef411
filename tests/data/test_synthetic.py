"""Tests of the synthetic fMRI-video simulator (brainjax.data.synthetic)."""

import itertools
import json

import numpy as np
import pytest

from brainjax.data import synthetic as S

# Small enough to generate in ~2 s, big enough for the statistics below.
# Seed 1 gives well separated HRF peaks (~3.4, ~5.9, ~6.8 s) for the lag test.
SMALL = {"seed": 1, "resolution": 32, "voxels_per_subject": (300, 360, 420), "train_segments": 6,
         "test_segments": 2, "segment_trs": 60, "train_repeats": 2, "test_repeats": 6, "rest_runs": 2,
         "rest_trs": 40, "hrf_peak_s": (3.0, 8.0)}
# For the (repeated) determinism checks.
TINY = {"seed": 3, "resolution": 16, "num_subjects": 2, "voxels_per_subject": (40, 53), "train_segments": 2,
        "test_segments": 1, "segment_trs": 12, "train_repeats": 2, "test_repeats": 3, "rest_runs": 1, "rest_trs": 12}


@pytest.fixture(scope="module")
def small_spec():
  return S.SyntheticSpec(**SMALL)


@pytest.fixture(scope="module")
def small_records(small_spec):
  return {split: list(S.iter_records(small_spec, split)) for split in ("train", "test", "rest")}


def _fmri(records, subject: int) -> np.ndarray:
  """float32[R, T, V] over all records of a split."""
  return np.stack([r["fmri"][f"subject_{subject}"] for _, r in records], axis=1)


def _segment_of(records) -> np.ndarray:
  return np.asarray([r["segment"] for _, r in records])


def _zscore_columns(x: np.ndarray) -> np.ndarray:
  return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-12)


# ----------------------------------------------------------------------------
# Subjects.
# ----------------------------------------------------------------------------


def test_subjects_differ_in_size_and_follow_the_hierarchy(small_spec):
  subjects = S.make_subjects(small_spec)
  assert [s.num_voxels for s in subjects] == list(small_spec.voxels_per_subject)
  assert len({s.num_voxels for s in subjects}) == len(subjects)
  for s in subjects:
    assert s.voxel_group.dtype == np.int8 and s.voxel_group.shape == (s.num_voxels,)
    assert np.all(np.diff(s.voxel_group) >= 0), "groups must be contiguous, in hierarchy order"
    assert set(np.unique(s.voxel_group)) == set(range(len(S.VOXEL_GROUPS)))
    assert small_spec.hrf_peak_s[0] <= s.hrf_peak_s <= small_spec.hrf_peak_s[1]
    sizes = {g: s.group_slice(g).stop - s.group_slice(g).start for g in S.VOXEL_GROUPS}
    assert s.rf_centre.shape == (sizes["retinotopic"], 2)
    assert s.motion_direction.shape == (sizes["motion"],)
    assert s.category_tuning.shape == (len(S.CLASSES), sizes["category"])
    assert s.scene_tuning.shape == (len(S.SCENES), sizes["scene"])
    assert np.all(s.voxel_gain[s.group_slice("noise")] == 0)
  # Different random tunings, different HRFs.
  peaks = sorted(s.hrf_peak_s for s in subjects)
  assert min(np.diff(peaks)) > 0.5
  assert not np.allclose(subjects[0].rf_centre[:10], subjects[1].rf_centre[:10])


def test_neural_drive_silences_noise_voxels(small_spec):
  clips = S.make_segment_clips(small_spec, "train", 0)
  features = S.stimulus_features(small_spec, clips, S.render_segment(small_spec, clips))
  subject = S.make_subjects(small_spec)[0]
  drive = S.neural_drive(subject, features)
  assert drive.shape == (small_spec.segment_frames, subject.num_voxels) and drive.dtype == np.float32
  assert np.all(drive[:, subject.group_slice("noise")] == 0)
  for group in S.VOXEL_GROUPS[:-1]:
    assert np.all(drive[:, subject.group_slice(group)].std(axis=0) > 0), group


# ----------------------------------------------------------------------------
# Hemodynamics, reliability, decodability.
# ----------------------------------------------------------------------------


def _category_drive_per_tr(spec, subject, split, segment) -> np.ndarray:
  clips = S.make_segment_clips(spec, split, segment)
  drive = S.neural_drive(subject, S.stimulus_features(spec, clips, S.render_segment(spec, clips)))
  category = drive[:, subject.group_slice("category")]
  return category.reshape(spec.segment_trs, spec.frames_per_tr, -1).mean(axis=1)


def _lagged_correlations(drive: np.ndarray, response: np.ndarray, max_lag: int) -> np.ndarray:
  """Mean over voxels of corr(drive[t], response[t + lag]) for lag = 0..max_lag."""
  n = len(drive)
  return np.asarray([(_zscore_columns(drive[:n - lag]) * _zscore_columns(response[lag:])).mean()
                     for lag in range(max_lag + 1)])


def test_hrf_lag_is_recoverable_by_cross_correlation(small_spec, small_records):
  subjects = S.make_subjects(small_spec)
  tr_s = small_spec.tr_s
  segments = _segment_of(small_records["test"])
  interpolated = []
  for s in subjects:
    responses = _fmri(small_records["test"], s.index).mean(axis=0)[:, s.group_slice("category")]
    curves = [_lagged_correlations(_category_drive_per_tr(small_spec, s, "test", seg), responses[segments == seg], 6)
              for seg in range(small_spec.test_segments)]
    curve = np.mean(curves, axis=0)
    best = int(np.argmax(curve))
    assert abs(best - round(s.hrf_peak_s / tr_s)) <= 1, (s.hrf_peak_s, curve)
    # Finer: the volume at TR t is sampled at t * tr_s, so the response to TR t's
    # frames (centred at t * tr_s + tr_s / 2) peaks (hrf_peak + tr_s / 2) / tr_s TRs later.
    assert 0 < best < 6
    left, mid, right = curve[best - 1:best + 2]
    lag = best + 0.5 * (left - right) / (left - 2 * mid + right)
    assert abs(lag - (s.hrf_peak_s + tr_s / 2) / tr_s) < 0.6, (s.hrf_peak_s, lag)
    interpolated.append(lag)
  order = np.argsort([s.hrf_peak_s for s in subjects])
  assert np.all(np.diff(np.asarray(interpolated)[order]) > 0), "a later HRF peak must give a later response"


def _repeat_reliability(fmri: np.ndarray, segments: np.ndarray) -> np.ndarray:
  """float[V]: mean over segments and repeat pairs of the correlation across TRs."""
  per_segment = []
  for seg in np.unique(segments):
    runs = [_zscore_columns(run) for run in fmri[:, segments == seg]]
    per_segment.append(np.mean([(a * b).mean(axis=0) for a, b in itertools.combinations(runs, 2)], axis=0))
  return np.mean(per_segment, axis=0)


def test_visual_voxels_are_reliable_and_noise_voxels_are_not(small_spec, small_records):
  segments = _segment_of(small_records["test"])
  for s in S.make_subjects(small_spec):
    reliability = _repeat_reliability(_fmri(small_records["test"], s.index), segments)
    by_group = {g: reliability[s.group_slice(g)].mean() for g in S.VOXEL_GROUPS}
    for group in ("retinotopic", "motion", "category", "scene"):
      assert 0.2 < by_group[group] < 0.7, (s.index, by_group)
    assert by_group["retinotopic"] > 0.35 and by_group["category"] > 0.25, by_group
    assert abs(by_group["noise"]) < 0.05, by_group


def test_noise_scale_sets_the_signal_to_noise_ratio(small_spec):
  clips = S.make_segment_clips(small_spec, "test", 0)
  features = S.stimulus_features(small_spec, clips, S.render_segment(small_spec, clips))
  subject = S.make_subjects(small_spec)[1]
  drive = S.neural_drive(subject, features)
  visual = subject.voxel_group < S.VOXEL_GROUPS.index("noise")
  means = []
  for noise_scale in (0.5, 1.0, 2.0):
    spec = S.SyntheticSpec(**{**SMALL, "noise_scale": noise_scale})
    runs = np.stack([S.simulate_run(spec, subject, drive, spec.segment_trs, np.random.default_rng(r))
                     for r in range(4)])
    means.append(_repeat_reliability(runs, np.zeros(spec.segment_trs))[visual].mean())
  assert means[0] > means[1] + 0.1 > means[2] + 0.2, means


def _windows(volumes: np.ndarray, segments: np.ndarray, shift: int, window: int) -> tuple[np.ndarray, np.ndarray]:
  """Features: volumes t+shift .. t+shift+window-1 concatenated, within each segment."""
  features, rows = [], []
  for seg in np.unique(segments):
    idx = np.flatnonzero(segments == seg)
    for t in range(len(idx) - shift - window + 1):
      features.append(volumes[idx[t + shift:t + shift + window]].reshape(-1))
      rows.append(idx[t])
  return np.asarray(features), np.asarray(rows)


def _ridge_accuracy(x_train, y_train, x_test, y_test, classes: int) -> float:
  mean, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
  x_train, x_test = (x_train - mean) / sd, (x_test - mean) / sd
  targets = np.eye(classes)[y_train]
  targets -= targets.mean(axis=0)
  penalty = float(x_train.shape[1])  # ~one unit of shrinkage per standardised feature
  weights = np.linalg.solve(x_train.T @ x_train + penalty * np.eye(x_train.shape[1]), x_train.T @ targets)
  return float(np.mean(np.argmax(x_test @ weights, axis=1) == y_test))


def test_category_is_decodable_and_the_hrf_lag_matters(small_spec, small_records):
  labels = {split: np.asarray([r["labels"]["category"] for _, r in small_records[split]])
            for split in ("train", "test")}
  segments = {split: _segment_of(small_records[split]) for split in ("train", "test")}
  chance = 1.0 / len(S.CLASSES)
  accuracy = {}
  for s in S.make_subjects(small_spec):
    averaged = {split: _fmri(small_records[split], s.index).mean(axis=0) for split in ("train", "test")}
    for shift, window in ((0, 2), (2, 1), (2, 2)):
      (x_train, rows_train), (x_test, rows_test) = (_windows(averaged[split], segments[split], shift, window)
                                                    for split in ("train", "test"))
      accuracy[s.index, shift, window] = _ridge_accuracy(x_train, labels["train"][rows_train], x_test,
                                                         labels["test"][rows_test], len(S.CLASSES))
    assert accuracy[s.index, 2, 2] > 3 * chance, accuracy
  mean = {key: np.mean([v for k, v in accuracy.items() if k[1:] == key]) for key in ((0, 2), (2, 1), (2, 2))}
  assert mean[2, 2] >= mean[2, 1], mean  # two TRs after the shift carry more than one
  assert mean[2, 2] > mean[0, 2] + 0.1, mean  # ignoring the hemodynamic delay costs accuracy


def test_rest_runs_carry_network_structure(small_spec, small_records):
  rest = _fmri(small_records["rest"], 0)[0]
  segments = _segment_of(small_records["rest"])
  subject = S.make_subjects(small_spec)[0]

  def mean_correlation(group):
    values = []
    for run in np.unique(segments):
      x = _zscore_columns(rest[segments == run][:, subject.group_slice(group)])
      corr = x.T @ x / len(x)
      values.append(corr[np.triu_indices_from(corr, 1)].mean())
    return np.mean(values)

  assert mean_correlation("category") > mean_correlation("noise") + 0.15
  assert abs(mean_correlation("noise")) < 0.1


# ----------------------------------------------------------------------------
# Determinism.
# ----------------------------------------------------------------------------


def _assert_records_equal(a, b):
  assert [k for k, _ in a] == [k for k, _ in b]
  for (_, x), (_, y) in zip(a, b):
    assert x["frames"].tobytes() == y["frames"].tobytes()
    assert x["caption"] == y["caption"] and x["clip_id"] == y["clip_id"] and x["scene_cut"] == y["scene_cut"]
    assert x["labels"] == y["labels"]
    for key in x["fmri"]:
      assert x["fmri"][key].tobytes() == y["fmri"][key].tobytes()  # bit-exact


def test_same_seed_gives_bit_identical_records():
  for split in ("train", "test", "rest"):
    _assert_records_equal(list(S.iter_records(S.SyntheticSpec(**TINY), split)),
                          list(S.iter_records(S.SyntheticSpec(**TINY), split)))


def test_different_seed_gives_different_records():
  other = S.SyntheticSpec(**{**TINY, "seed": TINY["seed"] + 1})
  for split in ("train", "rest"):
    a, b = list(S.iter_records(S.SyntheticSpec(**TINY), split)), list(S.iter_records(other, split))
    assert not np.array_equal(a[0][1]["fmri"]["subject_0"], b[0][1]["fmri"]["subject_0"])
  a, b = (next(S.iter_records(spec, "train"))[1]["frames"] for spec in (S.SyntheticSpec(**TINY), other))
  assert not np.array_equal(a, b)


def test_a_split_does_not_depend_on_what_was_generated_before():
  spec = S.SyntheticSpec(**TINY)
  list(S.iter_records(spec, "train"))
  after_train = list(S.iter_records(spec, "test"))
  alone = list(S.iter_records(S.SyntheticSpec(**TINY), "test"))
  _assert_records_equal(after_train, alone)
  # Nor on the number of subjects: subject 0 is the same brain in a one-subject dataset.
  single = S.SyntheticSpec(**{**TINY, "num_subjects": 1, "voxels_per_subject": TINY["voxels_per_subject"][:1]})
  single_records = list(S.iter_records(single, "test"))
  for (_, x), (_, y) in zip(alone, single_records):
    assert x["fmri"]["subject_0"].tobytes() == y["fmri"]["subject_0"].tobytes()


def test_repeats_share_the_stimulus_but_not_the_noise():
  spec = S.SyntheticSpec(**{**TINY, "noise_scale": 0.0})
  fmri = _fmri(list(S.iter_records(spec, "test")), 0)
  np.testing.assert_allclose(fmri[0], fmri[1], atol=1e-6)  # no noise: identical repeats
  noisy = _fmri(list(S.iter_records(S.SyntheticSpec(**TINY), "test")), 0)
  assert not np.allclose(noisy[0], noisy[1])


# ----------------------------------------------------------------------------
# Record schema, captions, labels.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test", "rest"])
def test_records_follow_the_schema(small_spec, small_records, split):
  records = small_records[split]
  size, fpt = small_spec.resolution, small_spec.frames_per_tr
  if split == "rest":
    expected_len, repeats = small_spec.rest_runs * small_spec.rest_trs, 1
  else:
    expected_len = small_spec.num_segments(split) * small_spec.segment_trs
    repeats = small_spec.num_repeats(split)
  assert len(records) == expected_len
  assert S.dataset_metadata(small_spec)["num_records"][split] == expected_len
  assert records[0][0] == (f"{split}-seg000-tr0000" if split != "rest" else "rest-run000-tr0000")
  assert records[-1][0].endswith(f"-tr{(small_spec.rest_trs if split == 'rest' else small_spec.segment_trs) - 1:04d}")
  assert len({k for k, _ in records}) == len(records)
  for _, r in records[:3] + records[-3:]:
    assert set(r) == {"frames", "caption", "clip_id", "segment", "tr", "scene_cut", "labels", "fmri"}
    assert r["frames"].dtype == np.uint8
    assert r["frames"].shape == ((0 if split == "rest" else fpt), size, size, 3)
    assert isinstance(r["caption"], str)
    assert isinstance(r["clip_id"], np.int64)
    assert isinstance(r["segment"], np.int32) and isinstance(r["tr"], np.int32)
    assert isinstance(r["scene_cut"], bool)
    assert set(r["labels"]) == set(S.LABEL_KEYS)
    assert all(isinstance(v, np.int32) for v in r["labels"].values())
    assert set(r["fmri"]) == {f"subject_{k}" for k in range(small_spec.num_subjects)}
    for k, v in enumerate(small_spec.voxels_per_subject):
      assert r["fmri"][f"subject_{k}"].dtype == np.float32
      assert r["fmri"][f"subject_{k}"].shape == (repeats, v)
      assert np.all(np.isfinite(r["fmri"][f"subject_{k}"]))
    if split == "rest":
      assert r["caption"] == "" and r["clip_id"] == -1 and not r["scene_cut"]
      assert all(v == -1 for v in r["labels"].values())
    else:
      assert r["caption"] and r["clip_id"] >= 0
      for key_, names in (("category", S.CLASSES), ("colour", S.COLOURS), ("direction", S.DIRECTIONS),
                          ("speed", S.SPEEDS), ("scene", S.SCENES)):
        assert 0 <= r["labels"][key_] < len(names)


def test_runs_are_zscored_per_voxel(small_records):
  fmri = _fmri(small_records["test"], 0)[:, :60]  # repeats of segment 0
  np.testing.assert_allclose(fmri.mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(fmri.std(axis=1), 1.0, atol=1e-4)


def test_captions_say_then_exactly_at_scene_cuts(small_spec, small_records):
  cuts = 0
  for split in ("train", "test"):
    for _, r in small_records[split]:
      assert ("Then" in r["caption"]) == r["scene_cut"], r["caption"]
      cuts += r["scene_cut"]
  assert 0 < cuts < len(small_records["train"]) + len(small_records["test"])
  # The caption lists every clip shown during the TR, in order.
  clips = S.make_segment_clips(small_spec, "train", 0)
  captions, clip_ids, scene_cut = S.tr_captions(small_spec, clips)
  by_id = {c.clip_id: c for c in clips}
  for t in np.flatnonzero(scene_cut):
    parts = captions[t].removesuffix(".").split(". Then ")
    assert parts[0] == by_id[int(clip_ids[t])].caption
    assert parts[1] == by_id[int(clip_ids[t]) + 1].caption


def test_captions_describe_the_clip():
  clip_caption = S.clip_caption(S.CLASSES.index("triangle"), S.COLOURS.index("red"), S.DIRECTIONS.index("left"),
                                S.SPEEDS.index("slowly"), S.SCENES.index("striped floor"))
  assert clip_caption == "a red triangle moves left slowly over a striped floor"
  assert S.clip_caption(0, S.COLOURS.index("orange"), 0, 1, 0).startswith("an orange circle")


def test_clip_ids_labels_and_timing_follow_the_clips(small_spec):
  all_ids = []
  for split in ("train", "test"):
    for segment in range(small_spec.num_segments(split)):
      clips = S.make_segment_clips(small_spec, split, segment)
      all_ids += [c.clip_id for c in clips]
      segment_s = small_spec.segment_trs * small_spec.tr_s
      assert clips[0].start_s == 0.0
      assert sum(c.duration_s for c in clips) == pytest.approx(segment_s)
      for c in clips[:-1]:
        assert small_spec.clip_seconds[0] <= c.duration_s <= small_spec.clip_seconds[1]
      assert clips[-1].duration_s <= small_spec.clip_seconds[1] + 1 / small_spec.fps
      for a, b in itertools.pairwise(clips):
        assert b.start_s == pytest.approx(a.start_s + a.duration_s)
        assert a.category != b.category and a.scene != b.scene  # every cut is visible
      frame_clip = S.frame_clip_index(small_spec, clips)
      assert set(np.unique(frame_clip)) == set(range(len(clips)))  # every clip is shown
      labels = S.tr_labels(small_spec, clips)
      _, first_ids, _ = S.tr_captions(small_spec, clips)
      fpt = small_spec.frames_per_tr
      for t in range(small_spec.segment_trs):
        middle = clips[frame_clip[t * fpt + fpt // 2]]
        assert all(labels[key][t] == getattr(middle, key) for key in S.LABEL_KEYS)
        assert first_ids[t] == clips[frame_clip[t * fpt]].clip_id
  assert len(all_ids) == len(set(all_ids)), "clip ids must be unique across the whole movie"


def test_metadata_is_json_and_describes_the_dataset(small_spec):
  metadata = json.loads(json.dumps(S.dataset_metadata(small_spec)))
  assert metadata["spec"]["voxels_per_subject"] == list(small_spec.voxels_per_subject)
  assert metadata["classes"] == list(S.CLASSES) and metadata["voxel_groups"] == list(S.VOXEL_GROUPS)
  assert metadata["segment_trs"]["train"] == [small_spec.segment_trs] * small_spec.train_segments
  assert metadata["segment_trs"]["rest"] == [small_spec.rest_trs] * small_spec.rest_runs
  for k, subject in enumerate(S.make_subjects(small_spec)):
    assert metadata["subjects"][k]["num_voxels"] == subject.num_voxels
    assert metadata["subjects"][k]["hrf_peak_s"] == subject.hrf_peak_s
    assert metadata["subjects"][k]["voxel_group"] == subject.voxel_group.tolist()


# ----------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------


def test_frames_per_tr_must_be_an_integer():
  assert S.SyntheticSpec(fps=4, tr_s=1.5).frames_per_tr == 6
  with pytest.raises(ValueError, match="tr_s"):
    S.SyntheticSpec(fps=3, tr_s=1.5)
  with pytest.raises(ValueError, match="tr_s"):
    S.SyntheticSpec(fps=3, tr_s=0.1)


@pytest.mark.parametrize("field, value", [
    ("seed", -1), ("seed", 1.5), ("resolution", 8), ("resolution", True), ("fps", 0), ("tr_s", 0.0),
    ("tr_s", float("inf")), ("num_subjects", 0), ("voxels_per_subject", (1500, 1800)),
    ("voxels_per_subject", (1500, 10, 2100)), ("train_segments", 0), ("test_segments", 0),
    ("segment_trs", 3), ("train_repeats", 0), ("test_repeats", 0), ("rest_runs", -1), ("rest_trs", 2),
    ("clip_seconds", (12.0, 4.0)), ("clip_seconds", (0.1, 4.0)), ("clip_seconds", (4.0,)),
    ("hrf_peak_s", (6.0, 4.0)), ("hrf_peak_s", (4.0, 20.0)), ("hrf_peak_s", (0.0, 5.0)),
    ("group_fractions", (0.5, 0.5)), ("group_fractions", (0.35, 0.15, 0.2, 0.1, 0.0)),
    ("noise_scale", -1.0), ("noise_scale", float("nan")), ("object_radius", 0.01), ("object_radius", 0.5),
])
def test_bad_spec_values_raise_naming_the_field(field, value):
  with pytest.raises(ValueError, match=rf"SyntheticSpec\.{field} .*must"):
    S.SyntheticSpec(**{field: value})


def test_bad_arguments_raise():
  spec = S.SyntheticSpec(**TINY)
  with pytest.raises(ValueError, match="split"):
    next(S.iter_records(spec, "validation"))
  with pytest.raises(ValueError, match="split"):
    S.make_segment_clips(spec, "rest", 0)
  with pytest.raises(ValueError, match="segment"):
    S.make_segment_clips(spec, "test", spec.test_segments)
  subject = S.make_subjects(spec)[0]
  with pytest.raises(ValueError, match="drive"):
    S.simulate_run(spec, subject, np.zeros((5, subject.num_voxels)), 12, np.random.default_rng(0))
  with pytest.raises(ValueError, match="n_trs"):
    S.simulate_run(spec, subject, None, 1, np.random.default_rng(0))


# ----------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------


def _single_clip_frames(category=0, colour=0, direction=0, speed=0, scene=None, resolution=64, start_xy=(0.5, 0.5)):
  spec = S.SyntheticSpec(resolution=resolution, segment_trs=10)
  scene = S.SCENES.index("plain grey room") if scene is None else scene
  clip = S.Clip(clip_id=0, start_s=0.0, duration_s=spec.segment_trs * spec.tr_s, category=category, colour=colour,
                direction=direction, speed=speed, scene=scene, caption="", start_xy=start_xy)
  return spec, S.render_segment(spec, [clip])


def test_object_radius_scales_the_object_area():
  white = S.COLOURS.index("white")
  areas = []
  for radius in (0.16, 0.26):
    spec = S.SyntheticSpec(resolution=64, segment_trs=10, object_radius=radius)
    clip = S.Clip(clip_id=0, start_s=0.0, duration_s=20.0, category=S.CLASSES.index("square"), colour=white,
                  direction=0, speed=0, scene=S.SCENES.index("plain grey room"), caption="", start_xy=(0.5, 0.5))
    areas.append(int((S.render_segment(spec, [clip])[0].min(axis=-1) > 180).sum()))
  # ~ (0.26 / 0.16)^2 = 2.6; a little more, since the anti-aliased rim counts less on the small one
  assert 2.4 < areas[1] / areas[0] < 3.2


def test_object_classes_have_distinct_silhouettes():
  white = S.COLOURS.index("white")
  # The grey room is darker than 0.45, so bright pixels are the object's fill.
  masks = np.stack([_single_clip_frames(category=c, colour=white)[1][0].min(axis=-1) > 180
                    for c in range(len(S.CLASSES))]).reshape(len(S.CLASSES), -1).astype(np.int64)
  area = masks.sum(axis=1)
  assert np.all(area > 0.01 * masks.shape[1]), "every object is clearly visible"
  intersection = masks @ masks.T
  iou = intersection / (area[:, None] + area[None, :] - intersection)
  off_diagonal = iou[~np.eye(len(S.CLASSES), dtype=bool)]
  assert off_diagonal.max() < 0.8 and off_diagonal.mean() < 0.5, np.round(iou, 2)


def test_objects_span_a_quarter_to_a_third_of_the_frame():
  extents = []
  for category in range(len(S.CLASSES)):
    frame = _single_clip_frames(category=category, colour=S.COLOURS.index("white"))[1][0]
    rows, cols = np.nonzero(frame.min(axis=-1) > 180)
    extents.append(max(np.ptp(rows), np.ptp(cols)) / frame.shape[0])
  assert 0.19 < min(extents) and max(extents) < 0.36, extents
  assert 0.25 <= np.median(extents) <= 0.34, extents


@pytest.mark.parametrize("colour", S.COLOURS)
def test_colours_render_as_named(colour):
  frame = _single_clip_frames(category=S.CLASSES.index("circle"), colour=S.COLOURS.index(colour))[1][0]
  centre = frame[28:36, 28:36].reshape(-1, 3).astype(float).mean(axis=0) / 255.0
  palette = np.asarray([S.COLOUR_RGB[c] for c in S.COLOURS])
  assert S.COLOURS[int(np.argmin(np.linalg.norm(palette - centre, axis=1)))] == colour
  np.testing.assert_allclose(centre, S.COLOUR_RGB[colour], atol=2 / 255)
  dominant = {"red": 0, "green": 1, "blue": 2}
  if colour in dominant:
    assert np.argmax(centre) == dominant[colour]


def _object_centroid(frame: np.ndarray) -> np.ndarray:
  mask = frame.min(axis=-1) > 180
  rows, cols = np.nonzero(mask)
  return np.asarray([cols.mean(), rows.mean()])


@pytest.mark.parametrize("direction", S.DIRECTIONS)
def test_objects_move_in_the_named_direction_at_the_named_speed(direction):
  displacement = {}
  for speed in S.SPEEDS:
    _, frames = _single_clip_frames(category=S.CLASSES.index("circle"), colour=S.COLOURS.index("white"),
                                    direction=S.DIRECTIONS.index(direction), speed=S.SPEEDS.index(speed))
    displacement[speed] = _object_centroid(frames[1]) - _object_centroid(frames[0])
  expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
  for speed, moved in displacement.items():
    assert np.dot(moved, expected) > 0.9 * np.linalg.norm(moved), (speed, moved)
  assert np.linalg.norm(displacement["quickly"]) > 2 * np.linalg.norm(displacement["slowly"]) > 1.0


def test_scenes_look_different():
  backgrounds = np.stack([S.render_background(k, 32) for k in range(len(S.SCENES))]).reshape(len(S.SCENES), -1)
  distances = np.linalg.norm(backgrounds[:, None] - backgrounds[None], axis=-1)
  assert distances[~np.eye(len(S.SCENES), dtype=bool)].min() > 3.0
  assert backgrounds.max() < 0.7, "backgrounds stay muted so objects stand out"


def test_renders_at_256_pixels():
  spec = S.SyntheticSpec(resolution=256, segment_trs=10, clip_seconds=(4.0, 6.0))
  clips = S.make_segment_clips(spec, "train", 0)
  frames = S.render_segment(spec, clips)
  assert frames.shape == (spec.segment_frames, 256, 256, 3) and frames.dtype == np.uint8
  features = S.stimulus_features(spec, clips, frames)
  low = S.stimulus_features(S.SyntheticSpec(resolution=64, segment_trs=10, clip_seconds=(4.0, 6.0)), clips,
                            S.render_segment(S.SyntheticSpec(resolution=64, segment_trs=10), clips))
  assert features["pixels"].shape == low["pixels"].shape  # voxels see a fixed-size image
  # The same clips at two resolutions give nearly the same low-resolution image.
  assert np.abs(features["pixels"] - low["pixels"]).mean() < 0.02
