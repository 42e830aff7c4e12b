"""Train the tiny InterActHuman model on the synthetic two-blob task and report mask IoU over flow time t.

    .venv/bin/python bench/mask_head_learning.py                 # 10 minutes, writes docs/img/mask_iou_over_t.png
    .venv/bin/python bench/mask_head_learning.py --seconds 120   # a quick look
    .venv/bin/python bench/mask_head_learning.py --steps 500 --seconds 3600  # fixed work, whatever the load

Prints the IoU of the predicted masks (prob > 0.5, token resolution) against each identity's true mask, against the
other identity's mask (must stay near 0: the head matches references, it does not just find blobs), and the IoU of an
all-ones mask (the blob's area fraction), for t = 0.1 .. 0.9; then plots IoU over t and IoU (t <= 0.3) over training.
See docs/MODEL.md for recorded numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.interacthuman import InterActHumanModel  # noqa: E402
from model.synthetic import BlobTask, evaluate, learning_model_config, make_batch, train_on_blobs  # noqa: E402

T_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="training time budget")
    parser.add_argument("--steps", type=int, default=100_000, help="training step budget (whichever ends first)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--final-samples", type=int, default=128, help="held-out samples for the final IoU over t")
    parser.add_argument("--plot", type=Path, default=Path("docs/img/mask_iou_over_t.png"))
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    task = BlobTask()
    config = learning_model_config(task)
    model = InterActHumanModel.from_model_config(config)
    print(f"model: dim {config.dim}, {config.num_layers} blocks, mask heads in the last {config.mask_head_blocks}; "
          f"task: {task.height}x{task.width} latents, {task.frames} frames, {task.identities} identities; "
          f"{args.threads} thread(s), {platform.processor() or platform.machine()}")
    result = train_on_blobs(
        model, task, max_seconds=args.seconds, max_steps=args.steps, eval_every=args.eval_every, eval_samples=32, seed=args.seed,
        t_values=(0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
    )

    g = torch.Generator().manual_seed(args.seed + 20_000)
    held_out = make_batch(task, args.final_samples, g)
    text = torch.randn(1, task.text_tokens, config.text_dim, generator=torch.Generator().manual_seed(args.seed))
    text = text.expand(max(args.final_samples, 16), -1, -1)
    final = evaluate(model, held_out, text, T_GRID, seed=args.seed + 30_000)

    print(f"\ntrained {result.steps} steps in {result.seconds:.0f}s; final IoU on {args.final_samples} held-out samples")
    print("   t   IoU(own id)  IoU(other id)")
    for t in T_GRID:
        print(f"{t:5.1f}  {final['iou'][t]:10.3f}  {final['cross_iou'][t]:12.3f}")
    print(f"mean t<=0.3: {final['iou_low_t']:.3f} (other id {final['cross_iou_low_t']:.3f}); "
          f"mean over t: {final['iou_all_t']:.3f}; all-ones mask: {final['all_ones_iou']:.3f}")

    numbers = {
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "threads": args.threads,
        "final": {k: v for k, v in final.items()},
        "history": [{k: h[k] for k in ("step", "seconds", "iou_low_t", "iou_all_t", "cross_iou_low_t")}
                    for h in result.history],
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(numbers, indent=1, default=str))
    plot(numbers, args.plot)
    print(f"plot: {args.plot}")


def plot(numbers: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = numbers["final"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ts = sorted(final["iou"])
    ax1.plot(ts, [final["iou"][t] for t in ts], "o-", label="own identity")
    ax1.plot(ts, [final["cross_iou"][t] for t in ts], "s--", label="other identity")
    ax1.axhline(final["all_ones_iou"], color="gray", ls=":", label="all-ones mask")
    ax1.set(xlabel="flow time t (0 = clean, 1 = noise)", ylabel="mask IoU", ylim=(0, 1),
            title=f"mask IoU over t after {numbers['steps']} steps ({numbers['seconds']:.0f}s)")
    ax1.legend()
    hist = numbers["history"]
    ax2.plot([h["seconds"] for h in hist], [h["iou_low_t"] for h in hist], "o-", label="t <= 0.3")
    ax2.plot([h["seconds"] for h in hist], [h["iou_all_t"] for h in hist], "^-", label="mean over eval t")
    ax2.plot([h["seconds"] for h in hist], [h["cross_iou_low_t"] for h in hist], "s--", label="other id, t <= 0.3")
    ax2.set(xlabel=f"training seconds ({numbers['threads']} CPU thread(s))", ylabel="mask IoU", ylim=(0, 1),
            title="during training (32 eval samples)")
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
