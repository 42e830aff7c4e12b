"""One end-to-end run of the default recipe (all stages, through Ray) on a single-speaker sample and a composed
two-person clip: the shards carry every member of the format, and ``inspect`` draws them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.inspect import colour, inspect_run
from pipeline.media import mux_mp4, read_wav_bytes
from pipeline.recipe import load_recipe
from pipeline.run import curate
from pipeline.shards import read_run
from stages.audio_vad import overlap, total
from tests.conftest import ROOT, sample
from tests.stages.annotate_media import FACE1, FACE2, composed


@pytest.fixture(scope="module")
def annotated_run(ray_local, tmp_path_factory):
    src = tmp_path_factory.mktemp("sources")
    shutil.copy(sample(FACE2), src / FACE2)
    clip, gt = composed(FACE1, FACE2)
    audio, _ = read_wav_bytes(clip.wav)
    (src / "pair.mp4").write_bytes(mux_mp4(clip.mp4, audio))
    out = tmp_path_factory.mktemp("run") / "run"
    recipe = load_recipe(ROOT / "datasets" / "recipes" / "default.yaml",
                         [f"sources={json.dumps([str(src)])}", f"output={json.dumps(str(out))}", "run.reraise=true"])
    curate(recipe, log=lambda m: None)
    samples = {Path(s.meta["source"]["path"]).name: s for s in read_run(out)}
    return out, samples, gt


def test_default_recipe_writes_every_member_of_the_format(annotated_run):
    _, samples, gt = annotated_run
    assert set(samples) == {FACE2, "pair.mp4"}
    for name, s in samples.items():
        n = 2 if name == "pair.mp4" else 1
        assert {"mp4", "wav", "json", "masks.npz"} | {f"ref_{i}.png" for i in range(n)} == set(s.raw), name
        masks, valid = s.masks()
        assert masks.shape[:2] == (n, s.meta["masks"]["frames"]) and valid.mean() > 0.8
        assert len(s.refs()) == n
        m = s.meta
        assert m["caption_source"] == "template" and m["caption"]
        assert len(m["identities"]) == n and all(i["phrase"] and i["speaking"] for i in m["identities"])
        assert m["vad"]["intervals"] and m["listening"] is False
        for stage in ("lipsync", "caption", "masks"):
            assert stage in m["scores"]
    # The two-person clip, after H.264 re-encoding, scene cutting and every filter: speech still routed right.
    ids = samples["pair.mp4"].meta["identities"]
    speech = sum(total(x) for x in gt["speaking"])
    right = sum(overlap(ids[k]["speaking"], gt["speaking"][k]) for k in range(2))
    assert right >= 0.85 * speech


def test_inspect_draws_masks_and_timeline(annotated_run, tmp_path):
    run, samples, _ = annotated_run
    index = inspect_run(run, tmp_path / "inspect")
    page = index.read_text()
    for key in (s.key for s in samples.values()):
        assert f"{key}.png" in page and f"{key}.mp4" in page
        assert (tmp_path / "inspect" / f"{key}.mp4").stat().st_size > 10_000
    pair = samples["pair.mp4"]
    sheet = np.asarray(Image.open(tmp_path / "inspect" / f"{pair.key}.png").convert("RGB")).astype(int)
    # Each identity's colour is on the sheet: tinted masks, outlines, speaking bars.
    for i in range(2):
        near = (np.abs(sheet - np.array(colour(i))).sum(axis=-1) < 40).mean()
        assert near > 0.005, f"identity {i}'s colour covers {near:.4f} of the sheet"
    # The preview has the audio muxed in.
    import av

    with av.open(str(tmp_path / "inspect" / f"{pair.key}.mp4")) as c:
        assert len(c.streams.audio) == 1 and len(c.streams.video) == 1
    assert inspect_run(run, tmp_path / "one", limit=1).read_text().count("<video") == 1
