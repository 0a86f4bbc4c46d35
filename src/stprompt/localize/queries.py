"""The localization query bank: normal background phrases and abnormal phrases per class.

The bank is a user-editable JSON file (`stp-eval --queries FILE`); `default_bank()` holds the paper's
examples. Abnormal queries for a model are every anomaly class's natural phrase plus that class's
paraphrases from the bank; bank entries for classes the model does not have are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.annotations import NORMAL, class_phrase
from ..errors import UserError
from ..fileio import read_json

FORMAT = "stprompt-queries/1"
NORMAL_TEMPLATE = "a picture of {}"
NORMAL_OBJECTS = [
    "sky", "ground", "road", "grass", "building", "wall", "tree",
    "floor tile", "desk", "cabinet", "chair", "door", "blank",
]  # fmt: skip
# The first four are the paper's examples; the others are ours, in the same spirit (visible evidence).
PARAPHRASES = {
    "Fighting": ["people knockout someone"],
    "RoadAccidents": ["people lying on the ground"],
    "Arson": ["someone ignite fire"],
    "Shooting": ["people shooting someone"],
    "Abuse": ["someone beating a person"],
    "Arrest": ["police handcuffing someone"],
    "Assault": ["someone attacking a person"],
    "Burglary": ["someone breaking into a building"],
    "Explosion": ["a blast of fire and smoke"],
    "Robbery": ["someone threatening a person with a weapon"],
    "Shoplifting": ["someone hiding goods in a shop"],
    "Stealing": ["someone taking things that are not theirs"],
    "Vandalism": ["someone breaking property"],
}


@dataclass
class QueryBank:
    normal: list[str]  # full texts, e.g. "a picture of sky"
    abnormal: dict[str, list[str]]  # class identifier -> paraphrases (the class phrase is added per model)

    def texts_for(self, classes: list[str]) -> tuple[list[str], list[str]]:
        """(normal texts, abnormal texts) for a model's classes (normal first in `classes`)."""
        abnormal: list[str] = []
        for cls in classes:
            if cls == NORMAL:
                continue
            for text in [class_phrase(cls), *self.abnormal.get(cls, [])]:
                if text not in abnormal:
                    abnormal.append(text)
        if not abnormal:
            raise UserError("the model has no anomaly classes to localize")
        return list(self.normal), abnormal

    def to_json(self) -> dict:
        return {"format": FORMAT, "normal": self.normal, "abnormal": self.abnormal}


def default_bank() -> QueryBank:
    return QueryBank(
        normal=[NORMAL_TEMPLATE.format(o) for o in NORMAL_OBJECTS],
        abnormal={k: list(v) for k, v in PARAPHRASES.items()},
    )


def load_bank(path: str | os.PathLike | None) -> QueryBank:
    """The bank in `path` (see `default_bank().to_json()` for the layout), or the default when None."""
    if path is None:
        return default_bank()
    p = Path(path)
    doc = read_json(p, "query file")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{p}: 'format' must be {FORMAT!r}")
    normal, abnormal = doc.get("normal"), doc.get("abnormal")
    if not isinstance(normal, list) or not normal or not all(isinstance(t, str) and t for t in normal):
        raise UserError(f"{p}: 'normal' must be a non-empty list of texts")
    if not isinstance(abnormal, dict) or not all(
        isinstance(v, list) and all(isinstance(t, str) and t for t in v) for v in abnormal.values()
    ):
        raise UserError(f"{p}: 'abnormal' must map class names to lists of texts")
    return QueryBank(normal=list(normal), abnormal={k: list(v) for k, v in abnormal.items()})


@dataclass
class EncodedQueries:
    """L2-normalised query embeddings [Q, D] with a mask of the abnormal rows."""

    texts: list[str]
    embeddings: np.ndarray  # float32 [Q, D], rows L2-normalised
    abnormal: np.ndarray  # bool [Q]


def encode_bank(clip_model, bank: QueryBank, classes: list[str]) -> EncodedQueries:
    """Encode the bank once with the frozen CLIP text encoder."""
    from ..clip.text import encode_texts

    normal, abnormal = bank.texts_for(classes)
    texts = normal + abnormal
    emb = encode_texts(clip_model, texts).float().numpy()
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    mask = np.array([False] * len(normal) + [True] * len(abnormal))
    return EncodedQueries(texts=texts, embeddings=emb.astype(np.float32), abnormal=mask)


def prompt_queries(prompt_features: np.ndarray, classes: list[str]) -> EncodedQueries:
    """The learned-prompt variant (VadCLIP-style baseline): the A-branch prompts are the queries."""
    emb = np.asarray(prompt_features, np.float32)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    mask = np.array([c != NORMAL for c in classes])
    return EncodedQueries(texts=[f"<prompt:{c}>" for c in classes], embeddings=emb, abnormal=mask)
