"""Evaluating a VQA checkpoint: accuracy per family and on the queries whose relation clause picks the object, one
question about one image, and a picture of example questions with the model's answers, right and wrong (also drawn
at the end of training: plots=vqa, data=vqa's).

    python -m nanovlm.evaluate ckpt=... image=17 question="how many circles are there?"
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import lightning as L
import torch
from PIL import Image

from nanovlm.data.questions import ANSWERS, FAMILIES, all_questions, answer, answer_ignoring_clause, clause_decides
from nanovlm.data.shapes import IMAGE_SIZE
from nanovlm.data.vqa import VQADataModule


@torch.no_grad()
def predict(
    model: L.LightningModule, datamodule: VQADataModule, index: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """[len(index)] the model's answer ids (into ANSWERS) for the world's items `index`."""
    was_training = model.training
    model.eval()
    parts = []
    for i in range(0, len(index), chunk):
        batch = datamodule.batch(index[i : i + chunk].to(datamodule.pixels.device))
        parts.append(model(batch["image"].to(model.device), batch["tokens"].to(model.device)).argmax(-1).cpu())
    model.train(was_training)
    return torch.cat(parts)


def example_items(right: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of up to n examples, half answered right and half wrong where there are enough of each, in a
    fixed order (the first of each kind), so pictures of two runs show the same questions where they can."""
    wrong_at, right_at = torch.nonzero(~right).flatten(), torch.nonzero(right).flatten()
    n_wrong = min(len(wrong_at), n // 2)
    n_right = min(len(right_at), n - n_wrong)
    return torch.cat([right_at[:n_right], wrong_at[: n - n_right]]).sort().values


def draw_examples(path: Path, images: torch.Tensor, questions: list[str], predicted: list[str], truths: list[str]):
    """A grid of images, each titled by its question, the model's answer and the truth (green right, red wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, question, said, truth in zip(axes.flat, images, questions, predicted, truths, strict=True):
        ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ok = said == truth
        verdict = f"model: {said}" + ("" if ok else f"   truth: {truth}")
        ax.set_title(
            "\n".join(textwrap.wrap(question, 30)) + "\n" + verdict,
            fontsize=9,
            color="darkgreen" if ok else "firebrick",
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_val_examples(model: L.LightningModule, datamodule: VQADataModule, path: Path, n: int = 16) -> Path:
    """The picture of `n` val questions (B's on CoGenT), half answered right, half wrong where possible."""
    index = datamodule.val_idx.cpu()
    if bool((datamodule.condition.cpu()[index] == 1).any()):
        index = index[datamodule.condition.cpu()[index] == 1]
    predicted = predict(model, datamodule, index)
    truth = datamodule.answer.cpu()[index]
    chosen = index[example_items(predicted == truth, n)]
    said = predict(model, datamodule, chosen)
    images = datamodule.images(chosen.to(datamodule.pixels.device)).cpu()
    return draw_examples(
        path,
        images,
        [datamodule.texts[i] for i in chosen.tolist()],
        [ANSWERS[i] for i in said.tolist()],
        [datamodule.answers[i] for i in chosen.tolist()],
    )


class VQAExamples(L.Callback):
    """At the end of fit: `<run_dir>/plots/vqa_examples.png` (and a W&B image) of val questions answered."""

    def __init__(self, n: int = 16, every_n_epochs: int = 0) -> None:
        if n < 1:
            raise ValueError(f"plots.n must be >= 1 (examples drawn), got {n}")
        self.n = n

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        path = draw_val_examples(
            pl_module, trainer.datamodule, Path(trainer.default_root_dir) / "plots" / "vqa_examples.png", self.n
        )
        if trainer.logger is not None and hasattr(trainer.logger, "log_image"):
            trainer.logger.log_image(key="plots/vqa_examples", images=[str(path)], step=trainer.global_step)


def read_image(spec: str, datamodule: VQADataModule) -> tuple[torch.Tensor, int | None]:
    """`image=` as an index into the world's images or a 32x32 image file -> ([3, S, S] in [0, 1], index or None)."""
    n = len(datamodule.pixels)
    if re.fullmatch(r"\d+", spec):
        if int(spec) >= n:
            raise ValueError(f"image: an index into the question world is 0..{n - 1}, got {spec}")
        return datamodule.images(torch.tensor([int(spec)]))[0], int(spec)
    if not Path(spec).is_file():
        raise ValueError(f"image: neither an image index (0..{n - 1}) nor an existing file: {spec!r}")
    picture = Image.open(spec).convert("RGB")
    if picture.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"image: the file must be {IMAGE_SIZE}x{IMAGE_SIZE} pixels, got {picture.size}")
    pixels = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8).view(IMAGE_SIZE, IMAGE_SIZE, 3)
    return pixels.permute(2, 0, 1).float().div(255), None


def clause_accuracy(datamodule: VQADataModule, index: torch.Tensor, right: torch.Tensor) -> dict[str, float]:
    """The model's accuracy on the query questions among `index` whose relation clause is what picks the object
    (`clause_decides`), beside the accuracy of ignoring the clause (`answer_ignoring_clause`): above it, the model
    reads the spatial word, which the yes/no `relation` family alone cannot show while it sits at chance."""
    hits, baseline = [], []
    for position, item in enumerate(index.tolist()):
        scene, question = datamodule.scenes[item], datamodule.questions[item]
        if clause_decides(scene, question):
            hits.append(float(right[position]))
            baseline.append(answer_ignoring_clause(scene, question, datamodule.answers[item]))
    n = len(hits)
    return {
        "n": n,
        "accuracy": sum(hits) / n if n else float("nan"),
        "ignoring_clause": sum(baseline) / n if n else float("nan"),
    }


def evaluate_vqa(model: L.LightningModule, datamodule: VQADataModule, cfg: Any, out_dir: Path) -> dict[str, Any]:
    """`python -m nanovlm.evaluate ckpt=<a VQA run's checkpoint> [image=17 question="..."]`: val accuracy per
    family, the example picture and, when asked, the model's answer to one question about one image."""
    results: dict[str, Any] = {}
    if cfg.question is not None or cfg.image is not None:
        if cfg.question is None or cfg.image is None:
            raise ValueError('question and image go together: image=17 question="how many circles are there?"')
        tokens = datamodule.tokenizer.encode(cfg.question)[None]  # an unknown word: one line naming the vocabulary
        image, index = read_image(str(cfg.image), datamodule)
        said = model.answer(image[None], tokens)[0]
        line = f"answer      {said}"
        known = all_questions().get(datamodule.tokenizer.decode(tokens[0]))
        if index is not None and known is not None:
            truth = answer(datamodule.scenes[index], known)
            said_truth = truth if truth is not None else "none, the question names no unique object"
            line += f"   (the scene's answer: {said_truth})"
            results["truth"] = truth
        print(
            f"question    {cfg.question}\nimage       {cfg.image}"
            + (f"  {datamodule.scenes[index]}" if index is not None else "")
        )
        print(line)
        results.update(question=cfg.question, image=str(cfg.image), answer=said)
    index = datamodule.val_idx
    right = predict(model, datamodule, index) == datamodule.answer[index]
    condition, family = datamodule.condition[index], datamodule.family[index]
    target = 1 if bool((condition == 1).any()) else 0
    accuracy = {"vqa_acc": float(right[condition == target].float().mean())}
    accuracy.update(
        {
            f"vqa_acc_{f}": float(right[(condition == target) & (family == i)].float().mean())
            for i, f in enumerate(FAMILIES)
            if bool(((condition == target) & (family == i)).any())  # data.families may leave some out
        }
    )
    if target == 1:
        accuracy["vqa_acc_A"] = float(right[condition == 0].float().mean())
    print(
        "val         "
        + "  ".join(f"{k.removeprefix('vqa_acc_') if k != 'vqa_acc' else 'all'} {v:.3f}" for k, v in accuracy.items())
    )
    results["val"] = accuracy
    results["clauses"] = clause_accuracy(datamodule, index[condition == target], right[condition == target])
    if results["clauses"]["n"]:
        c = results["clauses"]
        print(
            f"clauses     {c['n']} query questions whose relation clause picks the object: {c['accuracy']:.3f} "
            f"(ignoring the clause: {c['ignoring_clause']:.3f})"
        )
    if cfg.plots:
        results["picture"] = str(draw_val_examples(model, datamodule, out_dir / "vqa_examples.png"))
        print(f"picture     {results['picture']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps({"ckpt": str(cfg.ckpt), **results}, indent=2))
    return results
