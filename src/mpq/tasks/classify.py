"""Image classification with any ``AutoModelForImageClassification`` (hub id or local folder).

Per sample: the label, the top-1 prediction and whether they match (by class name,
case-insensitively, so datasets and models that index classes differently still agree).
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
from pydantic import field_validator

from mpq.components import Options, Task
from mpq.registry import register
from mpq.tasks.hub import BUILTIN_PREFIX, HubModel, known_builtin, load_processor_and_model, mpq_cache

TINY_VIT = "builtin:tiny-vit"


class ClassifyOptions(Options):
    model: str = "google/vit-base-patch16-224"  # hub id, local folder, or builtin:tiny-vit
    revision: str | None = None

    @field_validator("model")
    @classmethod
    def _known_builtin(cls, model: str) -> str:
        return known_builtin(model, (TINY_VIT,))


def tiny_vit() -> str:
    """A tiny randomly initialised ViT classifier, written once in HF format to mpq's cache.

    It exists so the smoke job runs offline through the real ``from_pretrained`` path; its
    classes are the names of the embedded scikit-image samples, its predictions are
    random and its accuracy means nothing.
    """
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from mpq.sources.samples import SKIMAGE_PHOTOS

    labels = list(SKIMAGE_PHOTOS)
    path = mpq_cache() / "models" / "tiny-vit-random"
    if not (path / "config.json").exists():
        import torch

        torch.manual_seed(0)
        config = ViTConfig(
            image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_labels=len(labels),
            id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        )
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        ViTForImageClassification(config).save_pretrained(tmp)
        ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp)
        try:
            tmp.rename(path)  # atomic: concurrent actors never see half a model
        except OSError:  # another process finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return str(path)


@register("task", "classify")
class Classify(Task):
    Options = ClassifyOptions
    columns = {"label": pa.string(), "prediction": pa.string(), "correct": pa.bool_(), "score": pa.float64()}

    def assets(self):
        if self.options.model.startswith(BUILTIN_PREFIX):
            return []  # written by mpq itself, offline
        return [HubModel(self.options.model, self.options.revision, ("AutoImageProcessor", "AutoModelForImageClassification"))]

    def load(self) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model_id = self.options.model
        if model_id == TINY_VIT:
            model_id = tiny_vit()
            self.pipeline_check = "tiny random classifier: accuracy means nothing"
        load_processor_and_model(self, AutoImageProcessor, AutoModelForImageClassification, model_id)
        self.id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}

    @classmethod
    def aggregate(cls, rows):
        correct = rows["correct"].drop_nulls()
        return {"accuracy": correct.cast(float).mean() if correct.len() else None}

    def predict(self, media: list[Any], targets: list[Any]) -> list[dict[str, Any]]:
        import torch

        # Media are H×W×C: said, not guessed (a guess takes a 1×1 or 3-row image for channels-first).
        inputs = self.processor(images=list(media), return_tensors="pt", device=self.device, input_data_format="channels_last")  # resized on the GPU if any
        pixel_values = inputs["pixel_values"].to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            top1 = self.model(pixel_values=pixel_values).logits.argmax(-1).tolist()
        rows = []
        for pred, target in zip(top1, targets):
            name = self.id2label.get(pred, str(pred))
            label = None if target is None else str(target)
            correct = None if label is None else name.casefold() == label.casefold()
            rows.append({"label": label, "prediction": name, "correct": correct, "score": None if correct is None else float(correct)})
        return rows
