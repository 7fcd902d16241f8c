"""The training datasets over a tiny clip store written here with write_clip.

Every stored frame says where it comes from: red = 10 x its frame index, green = 40 x its clip
number, blue = 255 - red; the render = 10 x frame index + 5; the pose's yaw = the frame index."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mimaface.data.clipstore import write_clip, write_dataset_info
from mimaface.data.datasets import ClipDataset, FramePairDataset, identity_names
from mimaface.errors import InputError
from mimaface.face3d.coefficients import motion_from_json

S = 24
# split, identity, clip, frames; clip numbers (green channel) count over this list
CLIPS = [("train", "ann", "c0", 12), ("train", "ann", "c1", 7), ("train", "ben", "c0", 10), ("test", "cat", "c0", 9)]


def make_clip(number: int, frames: int):
    t = np.arange(frames)
    video = np.empty((frames, S, S, 3), np.uint8)
    video[..., 0] = (10 * t)[:, None, None]
    video[..., 1] = 40 * number
    video[..., 2] = (255 - 10 * t)[:, None, None]
    renders = np.broadcast_to((10 * t + 5)[:, None, None], (frames, S, S)).astype(np.uint8)
    motion = motion_from_json({"fps": 25, "num_frames": frames, "interpolation": "linear", "frames": [
        {"frame": 0, "yaw": 0, "jawOpen": 0.0, "gazeLeftX": 0.0},
        {"frame": frames - 1, "yaw": frames - 1, "jawOpen": 1.0, "gazeLeftX": 0.1}]})
    motion.image_size = (S, S)
    return video, renders, motion


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    write_dataset_info(root, {"source": "test", "size": S, "fps": 25.0})
    for number, (split, identity, clip, frames) in enumerate(CLIPS):
        write_clip(root, split, identity, clip, *make_clip(number, frames))
    return root


def decode(image: torch.Tensor) -> tuple[int, int]:
    """(frame index, clip number) that a [-1, 1] CHW image of the store shows."""
    values = ((image.float() + 1) * 127.5).round().reshape(3, -1).mean(1)
    return round(values[0].item() / 10), round(values[1].item() / 40)


def clip_number(dataset, clip_index: int) -> int:
    ref = dataset.clips[clip_index]
    return next(i for i, c in enumerate(CLIPS) if (c[0], c[1], c[2]) == (ref.split, ref.identity, ref.clip))


def test_frame_pairs_shapes_dtypes_ranges(store):
    data = FramePairDataset(store, "train")
    assert len(data) == 12 + 7 + 10 and data.size == S
    item = data[3]
    assert item["source"].shape == item["target"].shape == (3, S, S)
    assert item["target_render"].shape == (1, S, S)
    assert item["pose"].shape == (6,) and item["gaze"].shape == (4,) and item["expression"].shape == (36,)
    for key in ("source", "target", "target_render", "pose", "expression", "gaze"):
        assert item[key].dtype == torch.float32, key
    for key in ("identity", "clip_index", "source_index", "target_index"):
        assert item[key].dtype == torch.int64 and item[key].shape == (), key
    for key in ("source", "target", "target_render"):
        assert -1.0 <= item[key].min() and item[key].max() <= 1.0
    assert 0.0 <= item["expression"].min() and item["expression"].max() <= 1.0
    # values exactly the stored ones
    clip, target = data.locate(3)
    stored = data.clips[clip].frames()[target]
    np.testing.assert_allclose(item["target"].permute(1, 2, 0).numpy(), stored / 127.5 - 1, atol=1e-6)
    three = FramePairDataset(store, "train", render_channels=3, source_render=True)[3]
    assert three["target_render"].shape == (3, S, S) and three["source_render"].shape == (3, S, S)
    assert torch.equal(three["target_render"][0], three["target_render"][2])


def test_source_and_target_come_from_the_same_clip(store):
    data = FramePairDataset(store, "train")
    seen_sources = set()
    for index in range(len(data)):
        item = data[index]
        clip = int(item["clip_index"])
        number = clip_number(data, clip)
        target, source = int(item["target_index"]), int(item["source_index"])
        assert decode(item["target"]) == (target, number)
        assert decode(item["source"]) == (source, number)
        assert source != target and 0 <= source < data.lengths[clip]
        assert (clip, target) == data.locate(index)
        assert item["pose"][0].item() == pytest.approx(target, abs=1e-4)  # yaw = frame index
        assert ((item["target_render"] + 1) * 127.5).round().unique().tolist() == [10 * target + 5]
        seen_sources.add((clip, source))
    assert len(seen_sources) > 15  # sources are spread over the clips' frames
    same = FramePairDataset(store, "train", same_frame_probability=1.0)
    assert all(int(same[i]["source_index"]) == int(same[i]["target_index"]) for i in range(len(same)))
    some = FramePairDataset(store, "train", same_frame_probability=0.3)
    share = np.mean([int(some[i]["source_index"]) == int(some[i]["target_index"]) for i in range(len(some))])
    assert 0.05 < share < 0.7


def test_identity_ids_are_one_mapping_over_both_splits(store):
    assert identity_names(store) == ["ann", "ben", "cat"]
    train, test = FramePairDataset(store, "train"), FramePairDataset(store, "test")
    assert train.identities == test.identities == ["ann", "ben", "cat"]
    for data in (train, test):
        for index in range(len(data)):
            item = data[index]
            assert data.identities[int(item["identity"])] == data.clips[int(item["clip_index"])].identity
    assert int(test[0]["identity"]) == 2
    clips = ClipDataset(store, "train", num_frames=4)
    assert [clips.identities[int(clips[i]["identity"])] for i in range(len(clips))] == \
        [clips.clips[int(clips[i]["clip_index"])].identity for i in range(len(clips))]
    with pytest.raises(InputError, match="not in the identity list"):
        FramePairDataset(store, "train", identities=["ann"])


def test_pairs_are_deterministic_given_seed_and_epoch(store):
    a, b = FramePairDataset(store, "train", seed=3), FramePairDataset(store, "train", seed=3)
    pairs = [a.pair(i) for i in range(len(a))]
    assert pairs == [b.pair(i) for i in reversed(range(len(b)))][::-1]
    assert all(torch.equal(a[i]["source"], b[i]["source"]) for i in (0, 5, 20))
    a.set_epoch(1)
    assert [a.pair(i) for i in range(len(a))] != pairs  # another epoch, other pairs
    a.set_epoch(0)
    assert [a.pair(i) for i in range(len(a))] == pairs
    assert [FramePairDataset(store, "train", seed=4).pair(i) for i in range(len(a))] != pairs


def test_clip_windows_are_consecutive_frames_matching_the_store(store):
    data = ClipDataset(store, "train", num_frames=4, stride=2, jitter=False)
    assert data.span == 7
    # non-overlapping windows of 7 frames: one in each clip (12, 7 and 10 frames)
    assert [tuple(w) for w in data.windows] == [(0, 0), (1, 0), (2, 0)]
    for index in range(len(data)):
        item = data[index]
        clip = int(item["clip_index"])
        ref = data.clips[clip]
        frames = item["frame_indices"].tolist()
        assert frames == list(range(frames[0], frames[0] + 7, 2))
        assert item["frames"].shape == (4, 3, S, S) and item["renders"].shape == (4, 1, S, S)
        assert item["pose"].shape == (4, 6) and item["expression"].shape == (4, 36) and item["gaze"].shape == (4, 4)
        stored = torch.from_numpy(np.array(ref.frames()[frames])).permute(0, 3, 1, 2).float() / 127.5 - 1
        assert torch.allclose(item["frames"], stored, atol=1e-6)
        stored_r = torch.from_numpy(np.array(ref.renders()[frames])).unsqueeze(1).float() / 127.5 - 1
        assert torch.allclose(item["renders"], stored_r, atol=1e-6)
        np.testing.assert_allclose(item["pose"][:, 0].numpy(), frames, atol=1e-4)
        motion = ref.motion()
        np.testing.assert_allclose(item["expression"].numpy(), motion.expression[frames], atol=1e-6)
        source = int(item["source_index"])
        assert decode(item["source"]) == (source, clip_number(data, clip))
        assert not frames[0] <= source <= frames[-1] or data.lengths[clip] == 7


def test_clip_windows_steps_jitter_and_source_modes(store):
    full = ClipDataset(store, "train", num_frames=3, window_step=1, jitter=False)
    assert len(full) == (12 - 2) + (7 - 2) + (10 - 2)
    jittered = ClipDataset(store, "train", num_frames=3, seed=1)
    starts = {jittered.window(i)[1] for i in range(len(jittered))}
    assert starts - {0, 3, 6, 9}  # moved off the grid
    for i in range(len(jittered)):
        clip, start, source = jittered.window(i)
        assert 0 <= start <= jittered.lengths[clip] - 3
        assert not start <= source < start + 3  # outside the window
    assert all(ClipDataset(store, "train", num_frames=3, source="first")[i]["source_index"] == 0 for i in range(3))
    ws = ClipDataset(store, "train", num_frames=3, source="window_start")
    assert all(ws[i]["source_index"] == ws[i]["frame_indices"][0] for i in range(len(ws)))
    covering = ClipDataset(store, "train", num_frames=12)  # only the 12-frame clip, wholly covered
    assert len(covering) == 1 and int(covering[0]["source_index"]) == 0
    with pytest.raises(InputError, match="no clip"):
        ClipDataset(store, "train", num_frames=13)


def test_an_empty_split_is_an_error(tmp_path):
    write_dataset_info(tmp_path, {"source": "test", "size": S})
    with pytest.raises(InputError, match="no clips in the 'train' split"):
        FramePairDataset(tmp_path, "train")
    with pytest.raises(InputError, match="not a mimaface data set"):
        ClipDataset(tmp_path / "elsewhere", "train")


def test_resizing_to_another_size(store):
    data = FramePairDataset(store, "train", size=12)
    item = data[0]
    assert item["source"].shape == (3, 12, 12) and item["target_render"].shape == (1, 12, 12)
    clip, _, target = data.pair(0)
    assert decode(item["target"]) == (target, clip_number(data, clip))  # flat colours survive resizing
    clips = ClipDataset(store, "train", num_frames=2, size=40)
    assert clips[0]["frames"].shape == (2, 3, 40, 40) and clips[0]["renders"].shape == (2, 1, 40, 40)
    assert clips[0]["frames"].min() >= -1 and clips[0]["frames"].max() <= 1


def test_works_in_a_dataloader_with_two_workers(store):
    data = FramePairDataset(store, "train", seed=7)
    data.set_epoch(2)
    loader = DataLoader(data, batch_size=4, shuffle=False, num_workers=2)
    batches = list(loader)
    assert sum(len(b["identity"]) for b in batches) == len(data)
    assert batches[0]["source"].shape == (4, 3, S, S) and batches[0]["identity"].dtype == torch.int64
    sources = torch.cat([b["source_index"] for b in batches]).tolist()
    assert sources == [data.pair(i)[1] for i in range(len(data))]  # the same items as in this process
    clips = ClipDataset(store, "train", num_frames=4, seed=7)
    batch = next(iter(DataLoader(clips, batch_size=3, num_workers=2)))
    assert batch["frames"].shape == (3, 4, 3, S, S)
    assert torch.equal(batch["frame_indices"][1], clips[1]["frame_indices"])
