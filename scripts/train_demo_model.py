#!/usr/bin/env python3
"""Train the small ArcFace-style MXNet model that ``qfleet demo`` ships, on synthetic faces.

The network follows insightface's conventions so that it takes the same code path as a real
checkpoint: input ``data`` is RGB, 112x112, raw 0..255, normalised inside the graph by
``(x - 127.5) / 128``; conv blocks with BatchNorm + PReLU; a BN-FC-BN head giving a 128-d
embedding; trained with an additive angular margin (ArcFace) softmax loss, whose class weights
are left out of the export. The result is written with ``HybridBlock.export`` as
``model-symbol.json`` + ``model-0001.params``, then re-imported and scored on the held-out
``lfw.bin`` (identities never seen in training) with the LFW protocol, mirror on.

    python scripts/train_demo_model.py --out operator/qfleet/data/demo-model
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qfleet.lfw import synthetic
from qfleet.lfw.dataset import decode_image, load_lfw_bin
from qfleet.lfw.protocol import VerificationResult, evaluate
from qfleet.model.mxnet_io import import_mxnet
from qfleet.outputs import sha256_file

mx = import_mxnet()
gluon, nn, nd, autograd = mx.gluon, mx.gluon.nn, mx.nd, mx.autograd

EPOCH = 1  # insightface checkpoints are usually exported as epoch 1 ("model-0001.params")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = synthetic.DEMO_DATA.seed
    identities: int = synthetic.DEMO_DATA.train_identities
    images_per_identity: int = synthetic.DEMO_DATA.train_images_per_identity
    widths: tuple[int, ...] = (32, 64, 128)
    embedding_size: int = 128
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 0.1
    weight_decay: float = 5e-4
    margin: float = 0.5
    scale: float = 32.0


# ----------------------------------------------------------------------------------------------
# Network


class FaceEmbedding(gluon.HybridBlock):  # type: ignore[misc,name-defined]
    """Raw RGB 0..255 in, 128-d embedding out; normalisation is part of the graph (insightface)."""

    def __init__(self, *, widths: tuple[int, ...], embedding_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential(prefix="")
            # A 4x4 stride-4 stem takes 112 -> 28 cheaply; the faces carry little detail below that.
            self.body.add(nn.Conv2D(widths[0], 4, strides=4, use_bias=False), nn.BatchNorm(), nn.PReLU())
            for width in widths[1:]:
                self.body.add(
                    nn.Conv2D(width, 3, strides=2, padding=1, use_bias=False), nn.BatchNorm(), nn.PReLU()
                )
                self.body.add(nn.Conv2D(width, 3, padding=1, use_bias=False), nn.BatchNorm(), nn.PReLU())
            # insightface's "E" output: BN -> FC -> BN (no activation) gives the embedding "fc1".
            self.head = nn.HybridSequential(prefix="")
            self.head.add(nn.BatchNorm(), nn.Dense(embedding_size, use_bias=False))
            self.head.add(nn.BatchNorm(scale=False, epsilon=2e-5, prefix="fc1_"))

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        x = (x - 127.5) * 0.0078125
        return self.head(self.body(x))


class ArcMarginLoss(gluon.HybridBlock):  # type: ignore[misc,name-defined]
    """Softmax cross-entropy on ``scale * cos(theta + margin)`` for the true class (ArcFace)."""

    def __init__(self, *, classes: int, embedding_size: int, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classes, self.scale, self.margin = classes, scale, 0.0
        with self.name_scope():
            self.weight = self.params.get(
                "weight", shape=(classes, embedding_size), init=mx.init.Normal(0.01)
            )
        self.cross_entropy = gluon.loss.SoftmaxCrossEntropyLoss()

    def hybrid_forward(self, F: Any, embedding: Any, label: Any, weight: Any) -> Any:
        cosine = F.dot(F.L2Normalization(embedding), F.L2Normalization(weight), transpose_b=True)
        target = F.pick(cosine, label, axis=1)
        theta = F.arccos(F.clip(target, -1 + 1e-6, 1 - 1e-6))
        # Past pi - margin, cos(theta + margin) would grow again: use insightface's linear fallback.
        with_margin = F.where(
            theta + self.margin < math.pi,
            F.cos(theta + self.margin),
            target - self.margin * math.sin(self.margin),
        )
        logits = cosine + F.one_hot(label, self.classes) * F.expand_dims(with_margin - target, axis=1)
        return self.cross_entropy(logits * self.scale, label)


# ----------------------------------------------------------------------------------------------
# Evaluation


def embed(
    net: Any, images: npt.NDArray[Any], *, flip: bool = True, batch_size: int = 200
) -> npt.NDArray[Any]:
    """Embeddings of (N, H, W, 3) uint8 RGB images; with ``flip``, f(x) + f(mirror x) as insightface."""
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = nd.array(images[start : start + batch_size].transpose(0, 3, 1, 2), dtype="float32")
        embedding = net(batch)
        if flip:
            embedding = embedding + net(batch.flip(axis=3))
        outputs.append(embedding.asnumpy())
    return np.concatenate(outputs)


def load_pairs(path: Path) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    pair_set = load_lfw_bin(path)
    images = np.stack(
        [decode_image(data, what=pair_set.image_label(i)) for i, data in enumerate(pair_set.images)]
    )
    return images, pair_set.issame


def verify(net: Any, images: npt.NDArray[Any], issame: npt.NDArray[Any]) -> VerificationResult:
    embeddings = embed(net, images)
    return evaluate(embeddings[0::2], embeddings[1::2], issame)


# ----------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class Data:
    images: npt.NDArray[Any]
    labels: npt.NDArray[Any]
    test_images: npt.NDArray[Any]
    issame: npt.NDArray[Any]
    lfw_bin_sha256: str


def prepare_data(config: TrainConfig) -> Data:
    """Training images in memory; the held-out pairs go through a real lfw.bin, as in the demo."""
    with tempfile.TemporaryDirectory() as scratch:
        paths = synthetic.generate_demo_data(scratch, seed=config.seed, calibration_images=0)
        test_images, issame = load_pairs(paths["lfw_bin"])
        digest = sha256_file(paths["lfw_bin"])
    images, labels = synthetic.make_training_set(
        config.seed, identities=config.identities, images_per_identity=config.images_per_identity
    )
    return Data(images, labels, test_images, issame, digest)


def fit(config: TrainConfig, data: Data, *, log: Any) -> tuple[Any, list[dict[str, float]]]:
    """SGD with warm-up and cosine decay on the ArcFace loss; scores the held-out pairs each epoch."""
    mx.random.seed(config.seed)
    rng = np.random.default_rng([config.seed, 7])
    net = FaceEmbedding(widths=config.widths, embedding_size=config.embedding_size, prefix="")
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    net.hybridize(static_alloc=True, static_shape=True)
    loss_head = ArcMarginLoss(
        classes=config.identities, embedding_size=config.embedding_size, scale=config.scale
    )
    loss_head.initialize()
    params = net.collect_params()
    params.update(loss_head.collect_params())
    trainer = gluon.Trainer(
        params, "sgd", {"learning_rate": config.learning_rate, "momentum": 0.9, "wd": config.weight_decay}
    )
    steps_per_epoch = len(data.images) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(len(data.images))
        mirrored = rng.uniform(size=len(data.images)) < 0.5  # the protocol embeds mirrored faces too
        losses = []
        for batch_index in range(steps_per_epoch):
            chosen = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            batch = data.images[chosen].transpose(0, 3, 1, 2)
            batch = np.where(mirrored[chosen, None, None, None], batch[..., ::-1], batch)
            # Warm up, then cosine decay; the margin grows over the first epoch so that training starts.
            warmup = min(1.0, (step + 1) / (steps_per_epoch / 2))
            cosine = 0.5 * (1 + math.cos(math.pi * step / total_steps))
            trainer.set_learning_rate(config.learning_rate * warmup * cosine)
            loss_head.margin = config.margin * min(1.0, step / steps_per_epoch)
            with autograd.record():
                loss = loss_head(net(nd.array(batch, dtype="float32")), nd.array(data.labels[chosen]))
            loss.backward()
            trainer.step(config.batch_size)
            losses.append(float(loss.mean().asscalar()))
            step += 1
        result = verify(net, data.test_images, data.issame)
        history.append(
            {"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "lfw_accuracy": result.accuracy}
        )
        log(f"epoch {epoch}/{config.epochs}: loss {np.mean(losses):.3f}, LFW accuracy {result.accuracy:.4f}")
    return net, history


def export(net: Any, out: Path) -> Any:
    """Write the embedding graph alone (no loss head) as an MXNet checkpoint and load it back."""
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "model"
    net.export(str(prefix), epoch=EPOCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Cannot decide type for ... data": it is float32
        return gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data"], f"{prefix}-{EPOCH:04d}.params")


def train(config: TrainConfig, *, out: Path, command: str, log: Any = print) -> dict[str, Any]:
    """Train, export ``out/model-symbol.json`` + ``out/model-0001.params``, score, write TRAINING.json."""
    started = time.perf_counter()
    data = prepare_data(config)
    rendered = time.perf_counter()
    log(
        f"rendered {len(data.images)} training images of {config.identities} identities in {rendered - started:.0f} s"
    )
    net, history = fit(config, data, log=log)
    trained = time.perf_counter()
    result = verify(export(net, out), data.test_images, data.issame)
    log(f"exported checkpoint: LFW accuracy {result.accuracy:.4f} +- {result.accuracy_std:.4f}")
    data_parameters = replace(
        synthetic.DEMO_DATA,
        seed=config.seed,
        train_identities=config.identities,
        train_images_per_identity=config.images_per_identity,
    )
    report = {
        "seed": config.seed,
        "data": synthetic.describe(data_parameters),
        "lfw_bin_sha256": data.lfw_bin_sha256,
        "config": asdict(config),
        "epochs": config.epochs,
        "training_images": len(data.images),
        "history": history,
        "lfw": {
            "pairs": result.pairs,
            "accuracy": round(result.accuracy, 4),
            "accuracy_std": round(result.accuracy_std, 4),
            "threshold": round(result.threshold, 4),
            "val_at_far": round(result.val_at_far, 4),
            "flip": True,
            "identities_disjoint_from_training": True,
        },
        "seconds": {
            "render": round(rendered - started, 1),
            "train": round(trained - rendered, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "model_bytes": sum(path.stat().st_size for path in out.glob("model-*")),
        "parameters": int(sum(p.data().size for p in net.collect_params().values())),
        "checkpoint": {"prefix": "model", "epoch": EPOCH, "input": "data", "shape": [1, 3, 112, 112]},
        "environment": {
            "python": platform.python_version(),
            "mxnet": mx.__version__,
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
        },
        "command": command,
    }
    (out / "TRAINING.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for model-symbol.json, model-0001.params"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--identities", type=int, default=defaults.identities)
    parser.add_argument("--images-per-identity", type=int, default=defaults.images_per_identity)
    parser.add_argument("--widths", default=",".join(map(str, defaults.widths)), help="channels per stage")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--margin", type=float, default=defaults.margin)
    parser.add_argument("--scale", type=float, default=defaults.scale)
    args = parser.parse_args(argv)
    config = TrainConfig(
        seed=args.seed,
        identities=args.identities,
        images_per_identity=args.images_per_identity,
        widths=tuple(int(w) for w in args.widths.split(",")),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        margin=args.margin,
        scale=args.scale,
    )
    command = " ".join(
        ["python scripts/train_demo_model.py", *(shlex.quote(a) for a in argv or sys.argv[1:])]
    )
    report = train(config, out=args.out, command=command, log=lambda message: print(message, flush=True))
    print(json.dumps({"accuracy": report["lfw"]["accuracy"], "seconds": report["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
