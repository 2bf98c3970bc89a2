"""The 24 category embeddings (19 structures + 5 findings) and whether they keep anatomical neighbourhood.

The embeddings are computed exactly as the text-guided model computes its class embeddings: every prompt
of a category through the text encoder and projection, averaged per category, L2-normalised. Adjacent
levels of the spine look alike and are named alike; an encoder that has kept that structure puts
"L4/L5 disc" nearer "L5/S1 disc" than "T12 vertebra", which is what the checks below measure.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from model_export.model.network import prompt_groups
from model_export.model.text_encoder import TextEncoder, tokenize
from service.ontology import DEFAULT_ONTOLOGY, Ontology


@torch.no_grad()
def category_embeddings(encoder: TextEncoder, tokenizer, ontology: Ontology = DEFAULT_ONTOLOGY,
                        max_length: int = 32) -> tuple[list[str], torch.Tensor]:
    """Names and (24, E) L2-normalised embeddings, structures in label order then findings."""
    was_training = encoder.training
    encoder.eval()
    groups = prompt_groups(ontology)
    texts = [t for g in groups for t in g]
    ids, mask = tokenize(tokenizer, texts, max_length)
    prompts = encoder(ids, mask)
    group = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    sums = torch.zeros(len(groups), prompts.shape[1]).index_add(0, group, prompts)
    encoder.train(was_training)
    names = [s.name for s in ontology.structures] + [f.name for f in ontology.findings]
    return names, F.normalize(sums, dim=-1)


def similarity_matrix(embeddings: torch.Tensor) -> np.ndarray:
    return (embeddings @ embeddings.T).numpy().astype(float)


def neighbourhood(sim: np.ndarray, ontology: Ontology = DEFAULT_ONTOLOGY) -> dict[str, float | bool | int]:
    """Checks on the structure block of a similarity matrix.

    * ``example``: sim(L4/L5 disc, L5/S1 disc) > sim(L4/L5 disc, T12 vertebra);
    * ``triplet_accuracy``: over every structure a of the vertebrae and discs, every same-kind neighbour
      b one level away and every same-kind c at least three levels away, the share with
      sim(a, b) > sim(a, c) (0.5 is chance);
    * ``adjacent_minus_far``: mean sim of adjacent same-kind pairs minus mean sim of pairs >= 3 apart.
    """
    index = {s.name: s.label - 1 for s in ontology.structures}
    wins = total = 0
    adjacent, far = [], []
    for kind in ("vertebra", "disc"):
        members = [index[s.name] for s in ontology.of_kind(kind)]  # caudal to cranial
        for i, j in itertools.permutations(range(len(members)), 2):
            if abs(i - j) == 1:
                adjacent.append(sim[members[i], members[j]])
                for k in range(len(members)):
                    if abs(i - k) >= 3:
                        total += 1
                        wins += sim[members[i], members[j]] > sim[members[i], members[k]]
            elif abs(i - j) >= 3:
                far.append(sim[members[i], members[j]])
    a, b, c = index["L4/L5 disc"], index["L5/S1 disc"], index["T12 vertebra"]
    return {"example": bool(sim[a, b] > sim[a, c]), "example_margin": float(sim[a, b] - sim[a, c]),
            "triplet_accuracy": wins / total if total else float("nan"), "triplets": total,
            "adjacent_minus_far": float(np.mean(adjacent) - np.mean(far))}
