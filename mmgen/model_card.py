"""Model cards: the ``README.md`` written with every saved model, in the Hugging Face Hub's format.

The card says what the model is (architecture, parameters per part), what it learnt from (the training data: name,
size, synthetic or not), how long (steps, images, time), how well (the evaluation scores and the command that
produced them) and what it is for (intended use, limitations). Its YAML header is the Hub's model-card metadata
(``library_name: mmgen``, ``pipeline_tag``, ``tags``, ``datasets``, ``metrics``, ``model-index`` with the scores),
written and read with ``huggingface_hub``'s ``ModelCardData`` / ``ModelCard``, plus an ``mmgen`` section with the
key facts as data (:func:`card_facts`: what ``mmgen caption``, ``mmgen serve`` and ``/v1/model`` show).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_NAME = "README.md"

METRICS = {"Bleu_4": ("bleu", "BLEU-4"), "CIDEr": ("cider", "CIDEr-D"), "METEOR": ("meteor", "METEOR")}
METRICS.update({"ROUGE_L": ("rouge", "ROUGE-L")})
"""Scores put in the card's ``model-index``: mmgen's name -> (the Hub's metric type, the name shown)."""


@dataclass
class TrainingData:
    """What a model learnt from."""

    name: str
    """The source: ``synthetic scenes`` or a file / folder / hub dataset name."""
    images: int | None = None
    """Training images (None: not known, e.g. a stream)."""
    captions: int | None = None
    """Training captions."""
    synthetic: bool = False
    """Rendered by ``mmgen data synth`` (shapes on backgrounds), not photos."""
    description: str = ""
    """One sentence on what the images show."""


@dataclass
class TrainingBudget:
    """How much training went into the weights."""

    steps: int
    images: int
    """Images seen (steps x global batch size)."""
    seconds: float | None = None
    """Wall-clock training time (None: not recorded)."""
    hardware: str = ""
    """Where it trained (``cpu``, ``cuda (NVIDIA H100)``, ...)."""


@dataclass
class Evaluation:
    """Scores and where they come from."""

    scores: dict[str, float]
    data: str
    """What was captioned: ``200 held-out synthetic scenes``."""
    command: str
    """The command that produced the scores (and reproduces them)."""
    notes: list[str] = field(default_factory=list)
    """More lines for the card (a baseline's scores, attribute accuracies)."""


@dataclass
class ModelCard:
    """The facts of a model card; :meth:`render` writes the ``README.md`` text."""

    name: str
    architecture: dict[str, str]
    """Part -> description (encoder, projector, decoder, tokenizer)."""
    parameters: dict[str, dict[str, int]]
    """Part -> {"total", "trainable"} (``CaptionModel.parameter_summary``)."""
    data: TrainingData | None = None
    budget: TrainingBudget | None = None
    evaluation: Evaluation | None = None
    intended_use: str = (
        "Captioning images like those it was trained on; a research and engineering baseline for mmgen's pipeline."
    )
    limitations: list[str] = field(default_factory=list)

    def trained_on(self) -> str:
        """One line on the training data (``synthetic scenes (...), 4,000 images``), or ``not recorded``."""
        if self.data is None:
            return "not recorded"
        size = f", {self.data.images:,} images" if self.data.images else ""
        return f"{self.data.name}{size}"

    def all_limitations(self) -> list[str]:
        out = list(self.limitations)
        if self.data is not None and self.data.synthetic:
            out.insert(
                0,
                "It knows synthetic shapes only: it was trained on rendered scenes of coloured shapes on simple "
                "backgrounds, never on photos. Any other image (a photo, a drawing, a screenshot) still gets a "
                "caption about shapes, colours and backgrounds, and that caption means nothing.",
            )
        if self.data is None:
            out.insert(0, "The training data of this model was not recorded: check where it came from before use.")
        return out + ["Captions are in the language and style of its training captions only."]

    def metadata(self):
        """The YAML header, as ``huggingface_hub.ModelCardData``."""
        from huggingface_hub import EvalResult, ModelCardData

        synthetic = self.data is not None and self.data.synthetic
        tags = ["mmgen", "image-captioning", "image-to-text", *(["synthetic-data"] if synthetic else [])]
        dataset = None if self.data is None else ("synthetic-scenes" if synthetic else Path(self.data.name).name)
        results = []
        if self.evaluation is not None:
            for key, (kind, shown) in METRICS.items():
                if isinstance(self.evaluation.scores.get(key), (int, float)):
                    results.append(
                        EvalResult(
                            task_type="image-to-text",
                            task_name="Image captioning",
                            dataset_type=dataset or "unknown",
                            dataset_name=self.evaluation.data,
                            metric_type=kind,
                            metric_value=round(float(self.evaluation.scores[key]), 4),
                            metric_name=shown,
                        )
                    )
        facts = {
            "trained_on": self.trained_on(),
            "synthetic_data": None if self.data is None else synthetic,
            "parameters": self.parameters.get("all", {}).get("total"),
        }
        return ModelCardData(
            library_name="mmgen",
            pipeline_tag="image-to-text",
            tags=tags,
            datasets=[dataset] if dataset else None,
            metrics=[METRICS[k][0] for k in METRICS if results and k in self.evaluation.scores] or None,
            model_name=self.name,
            eval_results=results or None,
            mmgen=facts,
        )

    def render(self) -> str:
        """The card: YAML header, then the sections in Markdown."""
        lines = [f"# {self.name}", "", "An image captioner made with mmgen (a timm ViT encoder, a projector and a "]
        lines[-1] += "transformers causal language model that writes the caption)."
        lines += ["", f"**Trained on:** {self.trained_on()}.", "", "## Architecture", ""]
        lines += ["| part | what | parameters | trainable |", "| --- | --- | ---: | ---: |"]
        for part, what in self.architecture.items():
            counts = self.parameters.get(part, {})
            lines.append(f"| {part} | {what} | {_count(counts.get('total'))} | {_count(counts.get('trainable'))} |")
        every = self.parameters.get("all", {})
        lines.append(f"| all | | {_count(every.get('total'))} | {_count(every.get('trainable'))} |")
        lines += ["", "## Training data", "", *_data_lines(self.data), "", "## Training budget", ""]
        lines += _budget_lines(self.budget)
        lines += ["", "## Evaluation", "", *_evaluation_lines(self.evaluation)]
        lines += ["", "## Intended use", "", self.intended_use, "", "## Limitations", ""]
        lines += [f"- {item}" for item in self.all_limitations()]
        lines += ["", "## Use", "", "```python", "from mmgen import Captioner", ""]
        lines += ['captioner = Captioner.from_pretrained("PATH_OR_REPO_ID")', 'captioner.caption(["image.jpg"])', "```"]
        lines += ["", "```bash", "mmgen caption image.jpg --model PATH_OR_REPO_ID", "```", ""]
        return f"---\n{self.metadata().to_yaml()}\n---\n\n" + "\n".join(lines)


def _count(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def _data_lines(data: TrainingData | None) -> list[str]:
    if data is None:
        return ["Not recorded (the model was saved outside a training run)."]
    kind = "synthetic (rendered by `mmgen data synth`), not photos" if data.synthetic else "as named"
    lines = [f"- source: {data.name}", f"- kind: {kind}"]
    if data.images is not None:
        lines.append(f"- size: {data.images:,} images" + (f", {data.captions:,} captions" if data.captions else ""))
    if data.description:
        lines.append(f"- what the images show: {data.description}")
    return lines


def _budget_lines(budget: TrainingBudget | None) -> list[str]:
    if budget is None:
        return ["Not recorded."]
    lines = [f"- {budget.steps:,} optimizer steps, {budget.images:,} images seen"]
    if budget.seconds is not None:
        lines.append(f"- {budget.seconds:,.0f} s of training" + (f" on {budget.hardware}" if budget.hardware else ""))
    elif budget.hardware:
        lines.append(f"- on {budget.hardware}")
    return lines


def _evaluation_lines(evaluation: Evaluation | None) -> list[str]:
    if evaluation is None or not evaluation.scores:
        return ["Not evaluated yet: `mmgen evaluate --model THIS_FOLDER --data ...` scores it."]
    shown = [k for k in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr") if k in evaluation.scores]
    lines = [f"On {evaluation.data}:", "", "| " + " | ".join(shown) + " |", "|" + " ---: |" * len(shown)]
    lines.append("| " + " | ".join(f"{float(evaluation.scores[k]):.3f}" for k in shown) + " |")
    lines += ["", "Produced by:", "", "```bash", evaluation.command, "```"]
    if evaluation.notes:
        lines += ["", *evaluation.notes]
    return lines


def write_card(folder: str | os.PathLike, text: str) -> Path:
    """Write ``folder/README.md`` atomically; returns its path."""
    from mmgen.atomic_files import atomic_write_text

    path = Path(folder) / CARD_NAME
    atomic_write_text(path, text)
    return path


def read_card(folder: str | os.PathLike) -> str | None:
    """The card text of a model folder, or None when it has none."""
    path = Path(folder) / CARD_NAME
    return path.read_text(encoding="utf-8") if path.is_file() else None


def card_facts(text: str | None, name: str = "") -> dict[str, Any]:
    """The key facts of a card as data: ``name``, ``trained_on``, ``synthetic_data``, ``parameters``, ``scores``
    (metric name -> value, from ``model-index``), read with ``huggingface_hub.ModelCard``. A missing or foreign card
    gives ``trained_on: "not recorded"``."""
    facts: dict[str, Any] = {"name": name, "trained_on": "not recorded", "synthetic_data": None, "parameters": None}
    facts["scores"] = {}
    if not text:
        return facts
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text, ignore_metadata_errors=True)
    except ValueError:  # a README whose header is not YAML
        return facts
    data = card.data.to_dict()
    facts.update({k: v for k, v in (data.get("mmgen") or {}).items() if k in facts})
    for result in card.data.eval_results or []:
        facts["scores"][result.metric_name or result.metric_type] = result.metric_value
    facts["name"] = name or card.data.model_name or ""
    return facts


def describe_parts(config) -> dict[str, str]:
    """One line per part of a ``ModelConfig``: what the encoder, projector, decoder and tokenizer are."""
    enc, dec = config.encoder, config.decoder
    over = dec.config_overrides or {}
    encoder = f"timm `{enc.name}`" + (" (pretrained)" if enc.pretrained else " (random init)")
    if enc.embed_dim or enc.depth:
        encoder += f", {enc.embed_dim or '?'} wide, {enc.depth or '?'} blocks"
    encoder += f", {enc.img_size or 224}x{enc.img_size or 224} input" + (
        f", {enc.stem} stem" if enc.stem != "patch" else ""
    )
    decoder = f"transformers `{dec.name}`" + (" (pretrained)" if dec.pretrained else " (random init)")
    if over:
        layers, width = over.get("n_layer", over.get("num_hidden_layers")), over.get("n_embd", over.get("hidden_size"))
        decoder += f", {layers} layer{'s' if layers != 1 else ''}, {width} wide" if layers or width else ""
    decoder += f", trained {dec.mode}" if dec.mode != "full" else ""
    return {
        "encoder": encoder,
        "projector": f"`{config.projector.kind}`",
        "decoder": decoder,
        "tokenizer": f"{config.tokenizer.kind}" + (f" ({config.tokenizer.name})" if config.tokenizer.name else ""),
    }


def model_card(model, name: str, **facts: Any) -> ModelCard:
    """A :class:`ModelCard` of a ``CaptionModel`` (architecture and parameters), with ``facts`` (data, budget,
    evaluation, limitations, intended_use) where known."""
    return ModelCard(
        name=name, architecture=describe_parts(model.config), parameters=model.parameter_summary(), **facts
    )
