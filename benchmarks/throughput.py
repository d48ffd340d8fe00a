"""Training throughput: ratchet's fine-tune stage against a plain PyTorch loop, same model and data, one run.

    python benchmarks/throughput.py [--images 60000] [--epochs 2] [--repeats 3]

The reference is the loop anyone would write: data resident on the device, shuffled minibatches,
AdamW, bf16 autocast on CUDA, cross-entropy. ratchet runs `fit(..., strategy="finetune")` on the
same images. Both are timed alternately, `--repeats` times each; the result is the ratio of the
medians (the machines are noisy). Writes benchmarks/results/throughput_<cpu|gpu>.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import FASHION_SPEC, FASHION_TRAIN, RESULTS, device_label, device_slug, write_json
from ratchet.data.fashion import load_fashion
from ratchet.train.feed import select_device
from ratchet.train.loop import fit
from ratchet.train.model import build_model, label_indices, preprocess


def reference_loop(images: np.ndarray, labels: np.ndarray, epochs: int, batch_size: int) -> float:
    """Plain PyTorch: returns images/s over the timed epochs (after one untimed warm-up step)."""
    device = select_device("auto")
    use_cuda = device.type == "cuda"
    torch.manual_seed(0)
    spec = FASHION_SPEC.with_classes(tuple(sorted(set(labels.tolist()))))
    model = build_model(spec).to(device)
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(label_indices(labels, spec.classes)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=FASHION_TRAIN.lr, fused=use_cuda or None)

    def step(idx: torch.Tensor) -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_cuda):
            loss = F.cross_entropy(model(preprocess(x[idx])).float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step(torch.arange(batch_size, device=device))
    if use_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y), device=device)
        for s in range(0, len(y), batch_size):
            step(order[s : s + batch_size])
    if use_cuda:
        torch.cuda.synchronize()
    return epochs * len(y) / (time.perf_counter() - t0)


def ratchet_fit(images: np.ndarray, labels: np.ndarray, epochs: int, batch_size: int) -> float:
    params = dataclasses.replace(
        FASHION_TRAIN, strategy="finetune", num_epochs=epochs, batch_size=batch_size, deterministic=False
    )
    result = fit(None, FASHION_SPEC, images, labels, params)
    # fit's own clock covers training only (not the final memory update); it ends on a host sync
    return result.images_processed / sum(s.seconds for s in result.history)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=FASHION_TRAIN.batch_size)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    train, _ = load_fashion()
    images, labels = train.images[: args.images], train.labels[: args.images]
    ref, ours = [], []
    for r in range(args.repeats):
        ref.append(reference_loop(images, labels, args.epochs, args.batch_size))
        ours.append(ratchet_fit(images, labels, args.epochs, args.batch_size))
        print(
            f"repeat {r + 1}: reference {ref[-1]:.0f} images/s, ratchet {ours[-1]:.0f} images/s", flush=True
        )
    doc: dict[str, Any] = {
        "device": device_label(),
        "model": dataclasses.asdict(FASHION_SPEC),
        "images": len(labels),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "reference_images_per_s": ref,
        "ratchet_images_per_s": ours,
        "ratio_median": statistics.median(ours) / statistics.median(ref),
    }
    base = RESULTS / f"throughput_{device_slug()}"
    write_json(base.with_suffix(".json"), doc)
    md = (
        f"# Fine-tune throughput ({doc['device']})\n\n"
        f"{doc['images']} Fashion-MNIST images, {doc['epochs']} epochs, "
        f"batch {doc['batch_size']}, small CNN\n\n"
        "| loop | median images/s |\n|---|---:|\n"
        f"| plain PyTorch reference | {statistics.median(ref):.0f} |\n"
        f"| ratchet fit (finetune) | {statistics.median(ours):.0f} |\n\n"
        f"ratio ratchet / reference: **{doc['ratio_median']:.3f}**\n"
    )
    base.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
