"""The class embeddings that guide the fusion head: read from the model directory, or embedded at load.

The fusion head is queried with one embedding per structure and per finding: the mean of the
L2-normalised embeddings of that class's prompts, re-normalised. The text encoder is needed for nothing
else, and it is the largest graph (all-MiniLM-L6-v2, about 90 MB), so an export writes these embeddings
to ``prompt_embeddings.npz`` (computed by the trained text encoder in torch) and a shipped model
directory leaves the text encoder and its tokenizer out.

The card records a digest of the prompts the embeddings were computed from. A card whose ontology
prompts were edited afterwards no longer matches them, and loading says so instead of guiding the model
with stale embeddings; such a change needs a directory exported with its text encoder
(``lumbar-ai export --with-text-encoder``), which embeds the card's prompts at load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import ModelDirectoryError
from service.infer.onnx_session import OnnxGraph
from service.ontology import Ontology

EMBEDDINGS_FILE = "prompt_embeddings.npz"
TEXT_ENCODER_FILE = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"


def prompt_groups(ontology: Ontology) -> list[list[str]]:
    """The prompts of each structure, then of each finding, in the ontology's order."""
    return [s.prompt_texts() for s in ontology.structures] + [f.prompt_texts() for f in ontology.findings]


def prompts_digest(ontology: Ontology) -> str:
    """SHA-256 of the ontology's class names and prompts: what a stored embedding was computed from."""
    names = [s.name for s in ontology.structures] + [f.key for f in ontology.findings]
    payload = json.dumps([names, prompt_groups(ontology)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def uses_text_encoder(card: dict[str, Any]) -> bool:
    """Whether this directory embeds its prompts at load (no stored embeddings in its card)."""
    return "embeddings" not in card.get("text", {})


def write_prompt_embeddings(out_dir: Path, ontology: Ontology, structures: np.ndarray, findings: np.ndarray
                            ) -> dict[str, Any]:
    """Store the (K, E) structure and (F, E) finding embeddings; returns the card's ``text.embeddings``."""
    np.savez(out_dir / EMBEDDINGS_FILE, structures=np.asarray(structures, dtype=np.float32),
             findings=np.asarray(findings, dtype=np.float32))
    return {"file": EMBEDDINGS_FILE, "prompts_sha256": prompts_digest(ontology),
            "shape": {"structures": list(structures.shape), "findings": list(findings.shape)},
            "computed_by": "the trained text encoder (torch) at export: mean of each class's L2-normalised "
                           "prompt embeddings, re-normalised"}


def read_prompt_embeddings(model_dir: Path, card: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The stored embeddings, checked against the card's ontology (class counts and prompt digest)."""
    section = card["text"]["embeddings"]
    ontology = Ontology.from_dict(card["ontology"])
    if section.get("prompts_sha256") != prompts_digest(ontology):
        raise ModelDirectoryError(
            f"{EMBEDDINGS_FILE} in {model_dir} was computed from other prompts than the card's ontology holds "
            "(were the prompts edited?); export the model again, with --with-text-encoder to change prompts")
    path = model_dir / str(section.get("file", EMBEDDINGS_FILE))
    if not path.is_file():
        raise ModelDirectoryError(f"missing {path.name} in {model_dir}")
    try:
        with np.load(path) as stored:
            structures, findings = stored["structures"], stored["findings"]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelDirectoryError(f"cannot read {path.name}: {exc}") from exc
    expected = (len(ontology.structures), len(ontology.findings))
    if (structures.ndim, findings.ndim) != (2, 2) or (structures.shape[0], findings.shape[0]) != expected \
            or structures.shape[1] != findings.shape[1]:
        raise ModelDirectoryError(f"{path.name} holds {structures.shape} and {findings.shape} embeddings; the card's "
                                  f"ontology has {expected[0]} structures and {expected[1]} findings")
    return structures.astype(np.float32), findings.astype(np.float32)


def embed_ontology_prompts(model_dir: Path, card: dict[str, Any], text_encoder: OnnxGraph
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(K, E) structure and (F, E) finding embeddings from the directory's text encoder and tokenizer."""
    from tokenizers import Tokenizer

    path = model_dir / TOKENIZER_FILE
    if not path.is_file():
        raise ModelDirectoryError(f"missing {TOKENIZER_FILE} in {model_dir}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelDirectoryError(f"cannot read {path.name}: {exc}") from exc
    ontology = Ontology.from_dict(card["ontology"])
    max_length = int(card.get("text", {}).get("max_length", 32))
    groups = prompt_groups(ontology)
    embeddings = np.stack([embed_texts(tokenizer, text_encoder, g, max_length).mean(axis=0) for g in groups])
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True) + 1e-12
    k = len(ontology.structures)
    return embeddings[:k].astype(np.float32), embeddings[k:].astype(np.float32)


def embed_texts(tokenizer: Any, text_encoder: OnnxGraph, texts: list[str], max_length: int) -> np.ndarray:
    encoded = tokenizer.encode_batch(texts)
    length = min(max_length, max(len(e.ids) for e in encoded))
    ids = np.zeros((len(texts), length), dtype=np.int64)
    mask = np.zeros((len(texts), length), dtype=np.int64)
    for i, e in enumerate(encoded):
        n = min(length, len(e.ids))
        ids[i, :n] = e.ids[:n]
        mask[i, :n] = e.attention_mask[:n]
    return text_encoder.run(input_ids=ids, attention_mask=mask)["embeddings"]
