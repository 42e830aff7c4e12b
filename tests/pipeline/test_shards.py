"""The shard format: atomic writer, rolling, reader, masks packing, and webdataset compatibility."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.media import encode_video, wav_bytes
from pipeline.shards import (
    ShardWriter,
    clip_key,
    iter_samples,
    pack_masks,
    parse_key,
    unpack_masks,
)


def _sample(key: str, n_frames: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (n_frames, 32, 48, 3), dtype=np.uint8)
    return {"__key__": key, "mp4": encode_video(frames, 25.0), "wav": wav_bytes(np.zeros(1600, np.float32)),
            "json": {"key": key, "clip": {"fps": 25.0}}}


def test_keys_are_deterministic_and_parse():
    k = clip_key("ab" * 32, 3.75, 8.76)
    assert k == "abababababababab_00003750_00008760"
    assert parse_key(k) == ("abababababababab", 3750, 8760)


def test_writer_rolls_by_count_and_keeps_groups_whole(tmp_path):
    commits = []
    w = ShardWriter(tmp_path, "t", max_samples=3, max_bytes=1 << 30, on_commit=commits.append)
    w.write_group([_sample("a_1_2"), _sample("a_2_3")])
    w.write_group([_sample("b_1_2"), _sample("b_2_3")])  # would exceed 3: rolls first
    w.write_group([_sample("c_1_2")])
    assert len(commits) == 1 and commits[0].keys == ["a_1_2", "a_2_3"]
    assert list(tmp_path.glob("*.tar.tmp"))  # the open shard is not yet a shard
    w.commit()
    assert [c.keys for c in commits] == [["a_1_2", "a_2_3"], ["b_1_2", "b_2_3", "c_1_2"]]
    assert not list(tmp_path.glob("*.tmp"))
    samples = list(iter_samples(sorted(tmp_path.glob("*.tar"))))
    assert [s.key for s in samples] == ["a_1_2", "a_2_3", "b_1_2", "b_2_3", "c_1_2"]
    assert samples[0].frames.shape == (4, 32, 48, 3)
    assert samples[0].audio.shape == (1600,)
    assert samples[0].meta["clip"]["fps"] == 25.0


def test_writer_rolls_by_size(tmp_path):
    w = ShardWriter(tmp_path, "t", max_samples=100, max_bytes=2048)
    for i in range(3):
        w.write_group([_sample(f"k{i}_0_1", seed=i)])
    w.commit()
    assert len(list(tmp_path.glob("*.tar"))) == 3


def test_temporary_shard_is_refused_by_reader(tmp_path):
    w = ShardWriter(tmp_path, "t", max_samples=10, max_bytes=1 << 30)
    w.write_group([_sample("x_0_1")])
    tmp = next(tmp_path.glob("*.tar.tmp"))
    with pytest.raises(ValueError, match="uncommitted"):
        list(iter_samples([tmp]))
    w.abort()
    assert not list(tmp_path.iterdir())


def test_webdataset_reads_our_shards(tmp_path):
    import webdataset as wds

    w = ShardWriter(tmp_path, "t", max_samples=10, max_bytes=1 << 30)
    w.write_group([_sample("x_0_1"), _sample("x_1_2")])
    shard = w.commit()
    got = list(wds.WebDataset(str(tmp_path / shard.name), shardshuffle=False))
    assert [g["__key__"] for g in got] == ["x_0_1", "x_1_2"]
    assert set(got[0]) >= {"mp4", "wav", "json"}


def test_masks_round_trip_packed():
    rng = np.random.default_rng(1)
    masks = rng.random((2, 7, 45, 80)) > 0.5
    valid = rng.random((2, 7)) > 0.3
    data = pack_masks(masks, valid)
    assert len(data) < masks.size / 8 * 1.2  # packed bits, not bytes
    m2, v2 = unpack_masks(data)
    assert np.array_equal(m2, masks) and np.array_equal(v2, valid)
    with pytest.raises(ValueError, match="identities, frames"):
        pack_masks(masks[0])
