"""The prompt rephraser: a tiny random-weight Qwen2.5-VL snapshot describes real reference photos; the phrases are
merged into the prompt, each concept tied to its reference; the image tokens get Qwen's 3-D positions; the command
writes the prompt it used and refuses to start without weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.rephrase import Concept, PromptRephraser, clean_phrase, merge_prompt
from model.sample_inputs import load_image
from tests.conftest import SAMPLES
from tests.stages.tiny_models import tiny_qwen25_vl

OBAMA = SAMPLES / "images" / "face_recognition_obama.jpg"
BIDEN = SAMPLES / "images" / "face_recognition_biden.jpg"
MAN = SAMPLES / "audio" / "per_speaker" / "multitalk_multi3_1-man.wav"


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return tiny_qwen25_vl(tmp_path_factory.mktemp("qwen_rephrase"))


@pytest.fixture(scope="module")
def rephraser(qwen_dir):
    torch.set_num_threads(1)
    return PromptRephraser(qwen_dir, device="cpu", max_new_tokens=8)


def test_each_reference_is_described_alone_and_named_in_the_merged_prompt(rephraser):
    people = [Concept(load_image(str(OBAMA), "t")), Concept(load_image(str(BIDEN), "t"))]
    thing = Concept(load_image(str(BIDEN), "t")[:64, :64].copy(), kind="object", has_audio=False)
    out = rephraser("Two men talk at a desk.", [*people, thing])
    assert len(out.descriptions) == 3 and out.original == "Two men talk at a desk."
    # one request per reference, in one batch: the same phrases as one at a time
    alone = [rephraser.describe([c])[0][0] for c in (*people, thing)]
    assert out.descriptions == alone
    assert out.prompt == merge_prompt("Two men talk at a desk.", [*people, thing], out.descriptions)
    assert out.prompt.startswith("Two men talk at a desk. Person 1 (reference 1, audio track 1)")
    assert "Person 2 (reference 2, audio track 2)" in out.prompt and "Object 1 (reference 3):" in out.prompt
    reqs = rephraser.requests([*people, thing])
    assert "clothing" in reqs[0].prompt and "what the object is" in reqs[2].prompt.lower()
    assert all(len(r.frames) == 1 for r in reqs)


def test_reference_images_get_qwens_3d_vision_positions(rephraser):
    """The rephraser's inputs type each image token (mm_token_type_ids == 1), so generate() lays the image tokens
    on their 2-D grid: the rope deltas the model used are those of its 3-D index, not the zeros of 1-D positions."""
    gen = rephraser.generator
    reqs = rephraser.requests([Concept(load_image(str(OBAMA), "t"))])
    inputs = gen.builder.build(reqs)
    types = inputs["mm_token_type_ids"][0]
    assert set(types.unique().tolist()) == {0, 1}
    assert torch.equal(types == 1, inputs["input_ids"][0] == gen.builder.image_id)
    gen.generate(reqs, max_new_tokens=2)
    m = gen.model
    pos, deltas = m.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                         image_grid_thw=inputs["image_grid_thw"],
                                         attention_mask=inputs["attention_mask"])
    assert m.model.rope_deltas is not None and int(deltas.abs().sum()) > 0
    assert m.model.rope_deltas.tolist() == deltas.tolist()
    _, gh, gw = inputs["image_grid_thw"][0].tolist()
    image = types == 1
    assert len(pos[1, 0, image].unique()) == gh // 2 and len(pos[2, 0, image].unique()) == gw // 2  # rows, cols


def test_phrases_are_cleaned_and_a_missing_one_still_names_its_concept():
    assert clean_phrase('  "a man in a grey suit."\nmore text') == "a man in a grey suit"
    c = Concept(np.zeros((4, 4, 3), np.uint8))
    assert merge_prompt("p", [c, c], ["x", ""]) == "p Person 1 (reference 1, audio track 1): x. " \
                                                   "Person 2 (reference 2, audio track 2)."
    with pytest.raises(ValueError, match="kind"):
        Concept(np.zeros((4, 4, 3), np.uint8), kind="animal")


def test_cli_rephrase_writes_the_prompt_it_used_next_to_the_video(qwen_dir, tmp_path):
    from pipeline.cli import main

    from pipeline.media import load_audio, wav_bytes

    short = tmp_path / "short.wav"
    short.write_bytes(wav_bytes(load_audio(str(MAN))[: 16000 * 2 // 5]))  # 0.4 s: one window
    out = tmp_path / "one.mp4"
    rc = main(["sample", "--model", "tiny", "--prompt", "A man talks.", "--ref", str(OBAMA), "--audio", str(short),
               "--rephrase", str(qwen_dir), "--steps", "1", "--height", "32", "--width", "32", "--ref-size", "16",
               "--out", str(out)])
    assert rc == 0
    used = out.with_suffix(".prompt.txt").read_text().strip()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert used.startswith("A man talks. Person 1 (reference 1, audio track 1)")
    assert meta["prompt"] == used and meta["rephrase"]["original"] == "A man talks."
    assert meta["rephrase"]["weights"] == str(qwen_dir) and len(meta["rephrase"]["descriptions"]) == 1


def test_cli_rephrase_without_weights_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from model.sample import InterActHumanSampler
    from pipeline.cli import main

    def refuse(*_a, **_k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(InterActHumanSampler, "from_dirs", classmethod(refuse))
    monkeypatch.setattr(PromptRephraser, "__init__", refuse)
    monkeypatch.chdir(tmp_path)
    base = ["sample", "--model", "tiny", "--prompt", "p", "--ref", str(OBAMA), "--audio", str(MAN),
            "--out", str(tmp_path / "o.mp4")]
    assert main(base + ["--rephrase"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --rephrase needs a local Qwen2.5-VL snapshot in weights/Qwen2.5-VL-7B-Instruct")
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in err and "config.json" in err
    empty = tmp_path / "qwen"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert main(base + ["--rephrase", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"snapshot in {empty}, which lacks preprocessor_config.json" in err and "*.safetensors" in err
    assert not (tmp_path / "o.mp4").exists()
