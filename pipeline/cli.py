"""The ``interacthuman`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = PROJECT_ROOT / "datasets" / "recipes" / "default.yaml"

CURATE_HELP = """\
Turn raw videos into WebDataset shards of clips (video, 16 kHz audio, json with scores and lineage).

Each source is probed, decoded once, cut into shots (PySceneDetect), split into clips within the recipe's length
bounds, and passed through the recipe's stages; clips that survive are written to shards in the run directory.
Runs are resumable: rerun the same command after a crash or Ctrl-C and finished sources are skipped.

Arguments are a recipe (.yaml), videos or folders of videos, or both: videos and folders replace the recipe's
sources (the default recipe when none is named), and without --output the run goes to ./runs/<first source name>.
"""
CURATE_EXAMPLES = """\
examples:
  interacthuman curate my_videos/                        # the default recipe on a folder, into runs/my_videos
  interacthuman curate talk1.mp4 talk2.mov -o runs/talks # two files
  interacthuman curate                                   # the default recipe on datasets/samples
  interacthuman curate datasets/recipes/paper.yaml /data/raw --output /data/run1
  interacthuman curate my_videos/ --set clips.min_s=5 --set stages.quality.min_sharpness=0.1
  interacthuman curate my_videos/ --score-only -o runs/scored   # keep every clip; then: interacthuman select
  interacthuman curate datasets/recipes/paper.yaml --address ray://head:10001   # on a running Ray cluster
"""


def _add_curate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="curate raw videos into shards", description=CURATE_HELP,
                       epilog=CURATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="RECIPE_OR_SOURCE",
                   help=f"a recipe YAML (default: {DEFAULT_RECIPE.relative_to(PROJECT_ROOT)}) and/or videos, "
                        "folders, globs or list files")
    p.add_argument("--sources", nargs="+", metavar="SRC",
                   help="directories, globs or list files of videos (replaces the recipe's sources)")
    p.add_argument("--output", "-o", metavar="DIR", help="run directory (replaces the recipe's output)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set clips.min_s=5 (repeatable)")
    p.add_argument("--weights", action="append", default=[], metavar="STAGE=DIR",
                   help="local weights directory of a stage's production backend (repeatable)")
    p.add_argument("--score-only", nargs="*", metavar="STAGE",
                   help="record scores but drop nothing (all stages, or the ones named)")
    p.add_argument("--max-attempts", type=int, metavar="N", help="quarantine a source after N failed attempts")
    p.add_argument("--reraise", action="store_true", help="stop at the first error instead of recording it")
    p.add_argument("--json", action="store_true", help="print the stats as JSON instead of a table")
    p.add_argument("--worker-logs", action="store_true",
                   help="show the Ray workers' output here (it always goes to Ray's session logs)")


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines) + "\n"


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="print what probing finds in video files",
                       description="Print container, codecs, duration, frame rate, rotation, aspect and audio "
                                   "of each file as JSON (the curate run's first step). Exit status 1 when a file "
                                   "is unusable (its reason is printed).",
                       epilog=_examples("interacthuman probe talk.mp4",
                                        "interacthuman probe datasets/samples/videos/*/*.mp4"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")


def _add_ls(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list the samples of a run directory",
                       description="List the committed samples of a run directory: key, span, size, scores.",
                       epilog=_examples("interacthuman ls runs/default", "interacthuman ls runs/default | wc -l"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")


def _add_cat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cat", help="write a file or object (s3://, gs://, a path) to standard output",
                       description="Stream a file or an object to standard output, with the credentials and endpoint "
                                   "the environment gives (AWS_ENDPOINT_URL, AWS_PROFILE, ...). webdataset reads a "
                                   "run in a bucket through it: 'pipe:interacthuman cat s3://bucket/run/shards/x.tar'.",
                       epilog="examples:\n  interacthuman cat s3://runs/r1/run.json\n"
                              "  interacthuman cat s3://runs/r1/shards/20261202-0-00000-00000.tar | tar t",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("uri")


def _cat(args: argparse.Namespace) -> int:
    from pipeline import storage

    out = sys.stdout.buffer
    try:
        with storage.open_input(args.uri) as f:
            while True:
                b = f.read(8 << 20)
                if not b:
                    break
                out.write(b)
    except (FileNotFoundError, OSError) as e:
        print(f"error: {args.uri}: {e}", file=sys.stderr)
        return 1
    out.flush()
    return 0


SELECT_HELP = """\
Apply new thresholds to a finished run from the scores it recorded: no video is decoded and no model runs. Writes
OUTPUT, a new run directory the trainer reads like any other (shards whose samples all survive are hard-linked).

Score once, select many times: curate with --score-only (every clip kept, with the reason each stage would drop
it), then select as often as you like. Only decision thresholds may change (e.g. stages.quality.min_sharpness,
stages.human.max_people; docs/STAGES.md lists them); a field that changes how a score is computed, or a threshold
whose score the run never recorded, is refused with the field named. From a run that was not --score-only,
thresholds can be tightened; clips it dropped cannot come back (counted as media_not_kept).
"""


def _add_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="new thresholds on a finished run, from its recorded scores (no model run)",
                       description=SELECT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=_examples(
                           "interacthuman curate my_videos/ --score-only -o runs/scored",
                           "interacthuman select runs/scored --set stages.quality.min_sharpness=0.12 -o runs/sharp",
                           "interacthuman select runs/scored --set stages.human.max_people=1 "
                           "--set stages.motion.min_motion=0.01 -o runs/solo",
                           "interacthuman select runs/scored -o runs/filtered      # the recipe's own thresholds",
                           "interacthuman select runs/scored --score-only -o runs/flags   # re-flag, drop nothing"))
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="stages.STAGE.FIELD=VALUE",
                   help="a stage's decision threshold (repeatable)")
    p.add_argument("--output", "-o", required=True, metavar="OUTPUT", help="the new run directory (must not exist)")
    p.add_argument("--score-only", nargs="*", metavar="STAGE",
                   help="flag but do not drop (all stages, or the ones named)")
    p.add_argument("--json", action="store_true", help="print the stats as JSON instead of a table")


def _select(args: argparse.Namespace) -> int:
    from pipeline.recipe import RecipeError
    from pipeline.select import SelectError, format_summary, select_run
    from pipeline.stats import format_table
    from stages.base import StageError

    try:
        stats = select_run(args.run_dir, args.output, args.overrides, args.score_only,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    except (SelectError, RecipeError, StageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_table(stats))
        print(format_summary(stats))
        print(f"run directory: {Path(args.output).resolve()}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write one HTML page of what a run did",
                       description="Write RUN/report/index.html: the funnel of clips through the stages with the "
                                   "drop reasons (a chart), CPU and GPU seconds per stage and per second of video, "
                                   "the quarantine list with reasons, contact sheets of the first samples, the "
                                   "recipe and the package versions. Open it in any browser.",
                       epilog=_examples("interacthuman report runs/default",
                                        "interacthuman report runs/sharp --out /tmp/sharp-report --gallery 20"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN/report; ./reports/NAME for a run in a bucket)")
    p.add_argument("--gallery", type=int, default=8, metavar="N", help="contact sheets of the first N samples")
    p.add_argument("--max-rows", type=int, default=500, metavar="N", help="at most N rows of the quarantine list")


def _report(args: argparse.Namespace) -> int:
    from pipeline.report import run_report

    try:
        index = run_report(args.run_dir, args.out, gallery=args.gallery, max_rows=args.max_rows,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {index}")
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="write contact sheets and an HTML index of a run's samples",
                       description="For each committed sample of RUN_DIR write a contact-sheet PNG (frames with each "
                                   "identity's mask in its own colour, and a timeline of who speaks when) and an "
                                   "index.html linking them.",
                       epilog=_examples("interacthuman inspect runs/default --limit 20",
                                        "interacthuman inspect runs/default --out /tmp/sheets"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/inspect)")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="at most N samples (0: all)")


WEIGHTS_HELP = """\
List or check the local weights directories of the stages' production backends (nothing is downloaded).

check runs each stage's pre-run check on DIR, then compares every tensor name and shape stored in the checkpoint
files (headers only; nothing is loaded) with the model the backend builds from DIR's config: nothing may be
missing, unexpected or of another shape. Exit status 1 when any directory fails.
"""


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list or check the production backends' weights directories",
                       description=WEIGHTS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=_examples(
                           "interacthuman weights                 # per stage and backend: the layout, its checkpoint",
                           "interacthuman weights check --weights quality=/w/one-align --weights masks=/w/gsam2"))
    p.add_argument("action", nargs="?", choices=["list", "check"], default="list")
    p.add_argument("--weights", action="append", default=[], metavar="STAGE=DIR",
                   help="check: a stage's weights directory (repeatable)")
    p.add_argument("--backend", action="append", default=[], metavar="STAGE=BACKEND",
                   help="check: the production backend when a stage has several")
    p.add_argument("--json", action="store_true", help="print JSON")


def _weights(args: argparse.Namespace) -> int:
    import dataclasses

    from stages.weights import check_dir, layouts

    if args.action == "list":
        rows = layouts()
        if args.json:
            print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
            return 0
        for r in rows:
            print(f"{r.stage} / {r.backend}: {r.published}")
            print(f"    --weights {r.stage}=DIR with: {', '.join(e.replace('|', ' or ') for e in r.expected)}")
            print(f"    {r.hint}")
        return 0
    if not args.weights:
        print("error: weights check needs --weights STAGE=DIR", file=sys.stderr)
        return 2
    backends = {}
    for b in args.backend:
        stage, sep, name = b.partition("=")
        if not sep:
            print(f"error: --backend {b}: expected STAGE=BACKEND", file=sys.stderr)
            return 2
        backends[stage] = name
    results = []
    for w in args.weights:
        stage, sep, d = w.partition("=")
        if not sep or not stage or not d:
            print(f"error: --weights {w}: expected STAGE=DIR", file=sys.stderr)
            return 2
        try:
            results.append(check_dir(stage, d, backends.get(stage)))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # noqa: BLE001 - an unknown stage name (RecipeError) and the like
            print(f"error: --weights {w}: {e}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps([{**dataclasses.asdict(r), "ok": r.ok} for r in results], indent=2))
    else:
        for r in results:
            print(f"{'ok' if r.ok else 'FAILED'}  {r.stage} / {r.backend}: {r.directory}")
            if r.error:
                print(f"    {r.error}")
            for rep in r.reports:
                print(f"    {rep.summary()}")
    return 0 if all(r.ok for r in results) else 1


TRAIN_HELP = """\
Train the InterActHuman model on curated shards (see model/train.py for the recipe fields).

A training recipe names the data (a curation run directory), the stage (audio: single-person pre-training with
global audio; multi: mask-gated audio and the mask loss), the model config and weights, and the optimisation.
Rerunning the same command resumes from the latest checkpoint in the recipe's output directory. With --nproc > 1,
Ctrl-C or SIGTERM stops every worker (forwarded to torchrun; a second signal kills them at once). The data may be a
run directory in a bucket (s3://...): shards are streamed; checkpoints stay on a local or shared path.
"""
TRAIN_EXAMPLES = """\
examples:
  interacthuman train datasets/recipes/train/debug_audio.yaml              # tiny model, CPU, one process
  interacthuman train datasets/recipes/train/debug_audio.yaml --nproc 2    # two processes, FSDP over gloo
  interacthuman train datasets/recipes/train/stage1_audio.yaml --nproc 8   # 1.3B on 8 GPUs
"""


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the model on curated shards", description=TRAIN_HELP,
                       epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="training recipe YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set steps=100 (repeatable)")
    p.add_argument("--nproc", type=int, default=1, metavar="N", help="processes on this node (torchrun); default 1")
    p.add_argument("--precompute", action="store_true",
                   help="encode the shards into feature shards on Ray first (training then reads tensors)")


def _add_precompute(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("precompute", help="encode shards into training features on Ray",
                       description="Run the frozen encoders (VAE, UMT5, wav2vec2) over a curation run's shards "
                                   "and write feature shards that training reads instead of running encoders.",
                       epilog=_examples("interacthuman precompute datasets/recipes/train/debug_audio.yaml",
                                        "interacthuman precompute datasets/recipes/train/stage1_audio.yaml "
                                        "--address ray://head:10001"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="training recipe YAML (its data, resolution and weights fields are used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local Ray)")

SAMPLE_HELP = """\
Generate a video of N people from a prompt and, per person, a reference image and an audio track (see
docs/SAMPLING.md). Inputs are checked before any model loads. The output is an MP4 lasting exactly as long as the
longest track (frames = round(seconds * fps)), with the tracks mixed and muxed in.

Identities, one of:
  --prompt TEXT --ref IMG1 --audio AUD1 [--ref IMG2 --audio AUD2 ...]    pairs in order; a --ref without an
                       --audio after it is a silent concept (an object): a reference and a mask, no audio
  --spec FILE.json     {"prompt": ..., "identities": [{"ref": ..., "audio": ..., "text": ...}, ...]} or a list of them
  --batch FILE.txt     one sample per line: prompt@@img1@@audio1[@@img2@@audio2 ...] (OmniAvatar's format)

Weights (local directories only):
  --model DIR          a trained model (save_pretrained dir, or a training output dir with model/ + train_config.json)
  --model tiny         a random tiny model (seeded): runs on a CPU without training; the video is noise
                       (tiny-i2v: its image-to-video form)
  --wan-dir, --audio-dir   Wan2.1 diffusers snapshot and wav2vec2 snapshot (default: the training config's); a tiny
                       model without them uses the tiny random encoders it was trained with

Image-to-video models (Wan2.1 I2V backbone) start the video from a first frame:
  --first-frame IMG    that image, centre-cropped to the video size (default: ref:0)
  --first-frame ref:K  the K-th --ref image on white

Prompt rephrasing (the paper's inference): --rephrase [DIR] has Qwen2.5-VL (a local snapshot, default
weights/Qwen2.5-VL-7B-Instruct) describe each reference and merges the descriptions into the prompt, each concept
named and tied to its reference and audio track; the prompt used is written next to the video (<out>.prompt.txt).
"""
SAMPLE_EXAMPLES = """\
examples:
  interacthuman sample --model tiny --prompt "two people talk" \\
      --ref datasets/samples/images/face_recognition_obama.jpg \\
      --audio datasets/samples/audio/per_speaker/multitalk_multi3_1-man.wav \\
      --ref datasets/samples/images/face_recognition_biden.jpg \\
      --audio datasets/samples/audio/per_speaker/multitalk_multi3_1-woman.wav --out /tmp/out.mp4 --save-masks
  interacthuman sample --model runs/train-stage2-multi --batch prompts.txt --out outputs/
  interacthuman sample --model tiny-i2v --prompt "a man talks" --first-frame datasets/samples/images/sadtalker_happy.png \\
      --ref datasets/samples/images/face_recognition_obama.jpg \\
      --audio datasets/samples/audio/per_speaker/multitalk_multi3_1-man.wav --out /tmp/i2v.mp4
  interacthuman sample --model runs/train-stage2-multi --rephrase /weights/Qwen2.5-VL-7B-Instruct --spec two.json
"""


class _IdentityFlag(argparse.Action):
    """--ref / --audio: appended to their own list and, in the order given, to ``identity_flags``."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, list(getattr(namespace, self.dest) or []) + [values])  # never the default
        order = getattr(namespace, "identity_flags", None) or []
        setattr(namespace, "identity_flags", order + [(self.dest, values)])


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate a video from a prompt and (image, audio) pairs",
                       description=SAMPLE_HELP, epilog=SAMPLE_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("inputs")
    g.add_argument("--prompt", metavar="TEXT", help="the scene caption (with --ref/--audio)")
    g.add_argument("--ref", action=_IdentityFlag, default=[], metavar="IMAGE",
                   help="reference image of a person or an object (repeat); without an --audio after it: silent")
    g.add_argument("--audio", action=_IdentityFlag, default=[], metavar="AUDIO",
                   help="the audio track of the --ref before it (repeat)")
    g.add_argument("--spec", metavar="FILE.json", help="JSON spec of one sample or a list of samples")
    g.add_argument("--batch", metavar="FILE.txt", help="lines prompt@@img1@@audio1[@@img2@@audio2 ...]")
    g.add_argument("--out", "-o", metavar="PATH",
                   help="output MP4 (default sample.mp4), or a directory for several samples (default samples/)")
    g.add_argument("--first-frame", metavar="IMG|ref:K",
                   help="image-to-video models: the video's first frame, an image or the K-th reference "
                        "(default ref:0)")
    g.add_argument("--rephrase", nargs="?", const="weights/Qwen2.5-VL-7B-Instruct", metavar="DIR",
                   help="rephrase the prompt from the references with Qwen2.5-VL from DIR "
                        "(default weights/Qwen2.5-VL-7B-Instruct)")
    g.add_argument("--save-masks", action="store_true",
                   help="also write <out>.masks.mp4 (mask overlay) and <out>.masks.npz (the masks)")
    w = p.add_argument_group("weights")
    w.add_argument("--model", required=True, metavar="DIR|tiny", help="trained model directory, or 'tiny'")
    w.add_argument("--wan-dir", metavar="DIR", help="Wan2.1 diffusers snapshot (VAE, UMT5, tokenizer)")
    w.add_argument("--audio-dir", metavar="DIR", help="wav2vec2 snapshot")
    w.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    w.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="model dtype (auto: bf16 on CUDA, fp32 on CPU)")
    w.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: 1 for a tiny model on the CPU, where more threads mostly "
                        "spin; torch's default otherwise)")
    s = p.add_argument_group("sampling")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--solver", default="unipc", choices=("unipc", "euler"))
    s.add_argument("--guidance", type=float, default=6.5, help="one CFG scale for text and audio (1: no CFG)")
    s.add_argument("--text-guidance", type=float, metavar="S",
                   help="a text scale of its own (MultiTalk's 3-row guidance; the audio scale is then --audio-guidance "
                        "or --guidance)")
    s.add_argument("--audio-guidance", type=float, metavar="S", help="an audio scale of its own (see --text-guidance)")
    s.add_argument("--mask-start", type=int, default=10, metavar="STEP",
                   help="denoising steps before predicted masks gate the audio (default 10)")
    s.add_argument("--early-audio", default="global", choices=("global", "withheld"),
                   help="audio before --mask-start with several people: everywhere, or none (default global)")
    s.add_argument("--mask-threshold", default="soft", metavar="P|soft",
                   help="gate with the mask probabilities, blended with muted audio (soft, the paper's; default), "
                        "or gate = mask >= P")
    s.add_argument("--fps", type=float, default=25.0)
    s.add_argument("--height", type=int, help="video height (default: the training config's, or the model's)")
    s.add_argument("--width", type=int, help="video width")
    s.add_argument("--ref-size", type=int, help="reference image side")
    s.add_argument("--window-frames", type=int, metavar="N", help="frames per window, 1 + 4k (81 real, 33 tiny)")
    s.add_argument("--motion-frames", type=int, metavar="N",
                   help="frames a window reuses from the previous one, 1 + 4k (25 real, 9 tiny)")
    s.add_argument("--seed", type=int, default=0, help="noise seed (and the random tiny model's)")


RUN_HELP = """\
From raw videos to a trained model and a sampled clip: curate, precompute features, train each stage (the second
starts from the first), then sample. A run recipe names the curation recipe, the training recipes and what to sample
(see pipeline/end_to_end.py). Every step resumes where it stopped when the command is run again.
"""
RUN_EXAMPLES = """\
examples:
  interacthuman run                                     # the debug run on datasets/samples, tiny model, CPU
  interacthuman run datasets/recipes/run/debug.yaml --set nproc=2
"""


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="raw videos -> shards -> trained model -> sampled clip", description=RUN_HELP,
                       epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", default=str(PROJECT_ROOT / "datasets" / "recipes" / "run" / "debug.yaml"),
                   help="run recipe YAML (default: datasets/recipes/run/debug.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run-recipe field, e.g. --set nproc=2 (repeatable)")


EVALUATE_HELP = """\
Score generated videos the way the InterActHuman paper and AnyTalker do, and write a report (docs/EVALUATION.md
defines every metric).

DIR holds videos X.mp4, each with its request X.json beside it (the sampler's own sidecar, or a spec
{"prompt": ..., "identities": [{"ref": ..., "audio": ...}, ...]}) and, from `sample --save-masks`, X.masks.npz.
DIR may also be a curation run directory: its samples are scored against their own audio.

Writes OUT/metrics.jsonl (one record per video, with per-identity values), OUT/summary.json (means, and under
"skipped" each metric that could not run and why) and OUT/index.html (the report), and prints a summary table.
Embedded metrics (lipsync, binding_accuracy, hkc, hkv, interactivity, mask_iou) run on a fresh clone; the others need
local weights: --weights METRIC=DIR (sync_c, clip_i, dino_i, face_sim, clip_t, iqa, fvd; boxes for the subject
detector). Exit status: 0 when every video was scored, 1 when some could not be read (named in the output), 2 when the
evaluation could not start.
"""
EVALUATE_EXAMPLES = """\
examples:
  interacthuman evaluate runs/samples --output runs/eval
  interacthuman evaluate runs/samples --output runs/eval --weights sync_c=/weights/syncnet \\
      --weights fvd=/weights/i3d --real /data/real_clips
  interacthuman evaluate runs/default --output runs/eval-curated     # a curation run's own samples
"""


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score generated videos (lip sync, binding, hands, eyes, FVD, ...)",
                       description=EVALUATE_HELP, epilog=EVALUATE_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="folder of generated videos with their requests, or a curation run")
    p.add_argument("--output", "-o", required=True, metavar="OUT", help="output folder")
    p.add_argument("--real", metavar="DIR", help="folder of real clips (FVD)")
    p.add_argument("--weights", action="append", default=[], metavar="METRIC=DIR",
                   help="local weights of a metric's production backend (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device of the production backends (cpu, cuda, ...)")
    p.add_argument("--json", action="store_true", help="print summary.json instead of the table")


def _evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluation.run import EvaluationError, evaluate, parse_weights, print_table

    try:
        weights = parse_weights(args.weights)
        summary = evaluate(args.dir, args.output, real=args.real, weights=weights, device=args.device,
                           log=lambda m: print(m, file=sys.stderr, flush=True)).to_dict()
    except EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
        print(f"wrote {Path(args.output) / 'metrics.jsonl'}, summary.json, index.html")
    return 1 if summary["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="interacthuman",
        description="InterActHuman data engine: curate raw videos into training shards.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_curate(sub)
    _add_probe(sub)
    _add_ls(sub)
    _add_inspect(sub)
    _add_cat(sub)
    _add_precompute(sub)
    _add_train(sub)
    _add_run(sub)
    _add_sample(sub)
    _add_evaluate(sub)
    _add_weights(sub)
    _add_select(sub)
    _add_report(sub)
    args = parser.parse_args(argv)
    if args.command == "curate":
        return _curate(args)
    if args.command == "probe":
        return _probe(args)
    if args.command == "ls":
        return _ls(args)
    if args.command in ("train", "precompute"):
        return _train(args)
    if args.command == "run":
        return _run(args)
    if args.command == "sample":
        return _sample(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "weights":
        return _weights(args)
    if args.command == "cat":
        return _cat(args)
    if args.command == "select":
        return _select(args)
    if args.command == "report":
        return _report(args)
    if args.command == "inspect":
        from pipeline.inspect import inspect_run

        index = inspect_run(args.run_dir, args.out, limit=args.limit)
        print(f"wrote {index}")
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


def curate_inputs(inputs: list[str], sources: list[str] | None,
                  output: str | None) -> tuple[str, list[str], str | None]:
    """What ``curate``'s positional arguments mean: (recipe path, sources, output). A ``.yaml``/``.yml`` argument is
    the recipe (at most one; the default recipe otherwise); every other one is a source (a video, a folder, a glob
    or a list file), added to ``--sources``. With sources on the command line and no ``--output`` the run goes to
    ``./runs/<name of the first source>``."""
    recipes = [a for a in inputs if a.lower().endswith((".yaml", ".yml"))]
    if len(recipes) > 1:
        raise ValueError(f"one recipe at a time, got {', '.join(recipes)}")
    srcs = [a for a in inputs if a not in recipes] + list(sources or [])
    for a in srcs:
        if "://" not in a and not any(c in a for c in "*?[") and not Path(a).expanduser().exists():
            raise ValueError(f"{a}: no such file or folder (sources are videos, folders of videos, globs or list "
                             "files; a recipe ends in .yaml)")
    if srcs and output is None:
        url = "://" in srcs[0]
        first = Path(srcs[0].rstrip("/").rsplit("://", 1)[-1]).expanduser()
        is_file = first.suffix.lower() in (".mp4", ".mov", ".mkv", ".webm", ".txt") if url else first.is_file()
        name = (first.stem if is_file else first.name) or "run"
        output = str(Path("runs") / "".join(c if c.isalnum() or c in "-_." else "_" for c in name))
    return (recipes[0] if recipes else str(DEFAULT_RECIPE)), srcs, output


def _curate(args: argparse.Namespace) -> int:
    from pipeline.recipe import RecipeError, load_recipe
    from pipeline.sources import SourceError
    from stages.base import StageError

    try:
        recipe_path, sources, output = curate_inputs(args.inputs, args.sources, args.output)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    if sources:
        overrides.append("sources=" + json.dumps([_cli_location(s) for s in sources]))
    if output:
        overrides.append(f"output={json.dumps(_cli_location(output))}")
    if args.address:
        overrides.append(f"run.address={json.dumps(args.address)}")
    if args.max_attempts is not None:
        overrides.append(f"run.max_attempts={args.max_attempts}")
    if args.reraise:
        overrides.append("run.reraise=true")
    for w in args.weights:
        stage, sep, d = w.partition("=")
        if not sep or not stage or not d:
            print(f"error: --weights {w}: expected STAGE=DIR", file=sys.stderr)
            return 2
        overrides.append(f"stages.{stage}.weights={json.dumps(str(Path(d).resolve()))}")
    try:
        recipe = load_recipe(recipe_path, overrides)
        if args.score_only is not None:
            names = args.score_only or list(recipe.stages)
            for n in names:
                if n not in recipe.stages:
                    raise RecipeError(f"--score-only {n}: the recipe runs no stage named {n} "
                                      f"(it runs: {', '.join(recipe.stages) or 'none'})")
                recipe.stages[n]["score_only"] = True
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from pipeline.run import curate, print_stats

    try:
        stats = curate(recipe, log=lambda m: print(m, file=sys.stderr, flush=True), worker_logs=args.worker_logs)
    except (SourceError, StageError, RecipeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print_stats(stats, recipe.output)
    return 0


def _cli_location(s: str) -> str:
    """A path given on the command line, relative to the current directory; URLs as given."""
    if "://" in s:
        return s
    return os.path.abspath(os.path.expanduser(s)) if any(c in s for c in "*?[") else str(Path(s).expanduser().resolve())


def _run(args: argparse.Namespace) -> int:
    from pipeline.end_to_end import load_run_recipe, run
    from pipeline.recipe import RecipeError

    try:
        recipe = load_run_recipe(args.recipe, args.overrides)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = run(recipe, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(summary, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from model.train import load_train_config
    from pipeline.recipe import RecipeError

    try:
        cfg = load_train_config(args.recipe, args.overrides)
    except (RecipeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.command == "precompute" or args.precompute:
        from model.precompute import precompute

        precompute(cfg, getattr(args, "address", None), log=log)
        if args.command == "precompute":
            return 0
    if args.nproc > 1:
        # torchrun starts its workers in their own sessions: run_torchrun forwards SIGINT/SIGTERM/SIGHUP to it and
        # kills any worker session still alive when it returns (model/launch.py)
        from model.launch import run_torchrun, torchrun_command

        recipe = str(Path(args.recipe).resolve())  # torchrun runs in the project root
        cmd = torchrun_command(args.nproc, "model.train", [recipe, *sum((["--set", o] for o in args.overrides), [])])
        return run_torchrun(cmd, cwd=PROJECT_ROOT, log=log)
    from model.train import train

    last = train(cfg)
    print(json.dumps(last))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from model.sample_inputs import InputError, load_request, read_batch_file, read_spec, request_from_flags, \
        request_summary

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    # 1. everything that can be checked without loading a model
    try:
        ways = [bool(args.ref or args.audio), bool(args.spec), bool(args.batch)]
        if sum(ways) != 1:
            raise InputError("give the people one way: --ref/--audio pairs, --spec FILE.json or --batch FILE.txt")
        if args.spec:
            requests = read_spec(args.spec)
        elif args.batch:
            requests = read_batch_file(args.batch)
        else:
            requests = [request_from_flags(args.prompt, getattr(args, "identity_flags", None) or [])]
        from model.sample import SamplingConfig, check_encoder_dirs, check_first_frame, check_sizes, \
            resolve_model_source, resolve_sampling_config

        source = resolve_model_source(args.model)
        wan_dir = args.wan_dir or source.train_config.get("wan_dir")
        audio_dir = args.audio_dir or source.train_config.get("audio_dir")
        check_encoder_dirs(source, wan_dir, audio_dir)
        try:
            threshold = None if args.mask_threshold == "soft" else float(args.mask_threshold)
        except ValueError:
            raise InputError(f"--mask-threshold {args.mask_threshold}: expected a number in (0, 1) or 'soft'") from None
        cfg = resolve_sampling_config(source, SamplingConfig(
            steps=args.steps, solver=args.solver, guidance_scale=args.guidance, mask_start_step=args.mask_start,
            text_guidance_scale=args.text_guidance, audio_guidance_scale=args.audio_guidance,
            early_audio=args.early_audio, mask_threshold=threshold, fps=args.fps, height=args.height,
            width=args.width, ref_size=args.ref_size, window_frames=args.window_frames,
            motion_frames=args.motion_frames, seed=args.seed))
        out_dir = args.out and (args.out.endswith("/") or Path(args.out).is_dir())
        if len(requests) == 1 and not out_dir:
            outs = [Path(args.out or "sample.mp4")]
        else:
            outs = [Path(args.out or "samples") / f"{r.name}.mp4" for r in requests]
        if any(o.suffix.lower() != ".mp4" for o in outs):
            raise InputError(f"--out {args.out}: give an .mp4 file (one sample) or a directory")
        if len(set(outs)) < len(outs):
            raise InputError("two samples would write the same file; give the spec entries distinct names")
        loaded = []
        for r in requests:
            check_sizes(source.config, cfg, len(r.identities))
            loaded.append(load_request(r))
        first_frame = check_first_frame(args.first_frame, source.config, [len(r.identities) for r in requests])
        if args.rephrase:
            from model.rephrase import check_rephrase_weights

            check_rephrase_weights(args.rephrase)
    except (InputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for item in loaded:
        log(request_summary(item, cfg.fps))
    # 2. load and sample
    import torch

    from model.sample import InterActHumanSampler, pick_device

    if args.threads or (pick_device(args.device).type == "cpu" and not source.expects_real_encoders):
        torch.set_num_threads(args.threads or 1)
    rephrased = [None] * len(loaded)
    if args.rephrase:  # before the sampler loads: the two models never share the device
        from model.rephrase import Concept, PromptRephraser

        rephraser = PromptRephraser(args.rephrase, device=None if args.device == "auto" else args.device)
        # a reference without an audio track is a silent concept: described as an object
        rephrased = [rephraser(item.request.full_prompt,
                               [Concept(img, kind="person" if ident.audio else "object", has_audio=bool(ident.audio))
                                for img, ident in zip(item.images, item.request.identities)])
                     for item in loaded]
        del rephraser
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        for r in rephrased:
            log(f"rephrased prompt: {r.prompt}")

    sampler = InterActHumanSampler.from_dirs(source.name, wan_dir, audio_dir, device=args.device, dtype=args.dtype,
                                             seed=args.seed)
    for note in sampler.notes:
        log(note)
    for item, out, reph in zip(loaded, outs, rephrased):
        result = sampler.sample_request(item, cfg, progress=log, first_frame=first_frame,
                                        prompt=reph.prompt if reph else None)
        for note in result.notes:
            if note not in item.notes:  # those were printed with the inputs
                log(f"note: {note}")
        written = result.write(out, save_masks=args.save_masks, extra={
            "request": {"origin": item.request.origin, "identities": [
                {"ref": i.ref, "audio": i.audio, "text": i.text} for i in item.request.identities]},
            "model": source.name, "loading": sampler.notes,
            **({"rephrase": {**reph.as_dict(), "weights": str(args.rephrase)}} if reph else {})})
        if reph:
            out.parent.mkdir(parents=True, exist_ok=True)
            prompt_file = out.with_suffix(".prompt.txt")
            prompt_file.write_text(reph.prompt + "\n")
            written.append(prompt_file)
        print(f"wrote {', '.join(str(p) for p in written)} ({result.num_frames} frames, "
              f"{result.duration:.2f} s, {result.seconds:.1f} s to sample)")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from pipeline.media import MediaError, probe

    rc = 0
    for f in args.files:
        try:
            print(json.dumps({"path": f, **probe(f)}, indent=2))
        except MediaError as e:
            print(json.dumps({"path": f, "error": str(e)}), flush=True)
            rc = 1
    return rc


def _ls(args: argparse.Namespace) -> int:
    from pipeline.shards import read_run

    n = 0
    for s in read_run(args.run_dir):
        src = s.meta["source"]
        print(f"{s.key}  {Path(src['path']).name}  {src['start_s']:.2f}-{src['end_s']:.2f}s  "
              f"{s.meta['clip']['width']}x{s.meta['clip']['height']}  {len(s.raw['mp4']) / 1e6:.2f} MB  "
              f"members: {','.join(sorted(s.raw))}")
        n += 1
    print(f"{n} samples", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
