"""Tiny models and a tokenizer, built in code: nothing is downloaded, ever.

What the training loops (``refimpl.train``) and the trainer-level checks run on: a character
tokenizer made with the ``tokenizers`` library and wrapped as a ``transformers`` fast tokenizer,
and ``transformers`` models built from a config (random weights, seeded). Every object is saved
with ``save_pretrained`` on a local path and reloads with ``from_pretrained``, so any
transformers-based trainer can load the very same model; any local causal-LM path can replace the
tiny one.

| builder              | class                                  | contract role (docs/contract.md) |
|----------------------|----------------------------------------|----------------------------------|
| ``build_tokenizer``  | ``PreTrainedTokenizerFast``            | the tokenizer beside every model |
| ``causal_lm``        | ``LlamaForCausalLM`` / ``GPT2LMHeadModel`` | policy and reference          |
| ``value_model``      | ``*ForTokenClassification``, 1 label   | PPO's critic V(s_t)              |
| ``reward_model``     | ``*ForSequenceClassification``, 1 label | Bradley-Terry reward model      |

Two architectures: ``"llama"`` (rotary positions) and ``"gpt2"`` (learned absolute positions).
Only the second exposes position ids that are wrong under left padding, so the checks run both.

Choices
- Dropout 0 everywhere (a loss computed twice must agree bit for bit).
- Sizes (hidden 64, 4 layers, 4 heads, MLP 256, tied embeddings) follow the measured tiny-LM
  figures for a 2-core CPU: about 0.27M parameters, ~5k tokens/s for training.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, GenerationConfig, GPT2Config,
                          LlamaConfig, PreTrainedTokenizerFast)

__all__ = ["CHARS", "ARCHS", "build_tokenizer", "config", "causal_lm", "value_model",
           "reward_model", "save", "check_causal_lm", "load_causal_lm", "load_reward_model", "load_tokenizer", "n_parameters"]

#: The characters every task writes with (digits, operators, separators).
CHARS = "0123456789+-*=>%:|,"
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
ARCHS = ("llama", "gpt2")


def build_tokenizer(chars: str = CHARS) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one id per character, ``<pad>`` 0, ``<bos>`` 1,
    ``<eos>`` 2; encoding prepends ``<bos>``, decoding concatenates without spaces."""
    if len(set(chars)) != len(chars) or not chars:
        raise ValueError(f"chars must be distinct characters, got {chars!r}")
    vocab = {PAD: 0, BOS: 1, EOS: 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS,
                                   eos_token=EOS, padding_side="left")


def config(tokenizer: PreTrainedTokenizerFast, arch: str = "llama", *, hidden: int = 64,
           layers: int = 4, heads: int = 4, max_positions: int = 64):
    """The transformers config of a tiny model of ``arch`` ("llama" or "gpt2")."""
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               tie_word_embeddings=True)
    if arch == "llama":
        return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=heads, intermediate_size=4 * hidden,
                           max_position_embeddings=max_positions, attention_dropout=0.0, **ids)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=4 * hidden,
                          n_positions=max_positions, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, summary_first_dropout=0.0, **ids)
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def _seeded(build, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.float().eval()


def causal_lm(tokenizer, arch: str = "llama", seed: int = 0, **sizes):
    """A tiny causal LM with seeded random weights and a generation config that knows the pad,
    bos and eos ids."""
    cfg = config(tokenizer, arch, **sizes)
    model = _seeded(lambda: AutoModelForCausalLM.from_config(cfg), seed)
    model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id)
    return model


def value_model(tokenizer, arch: str = "llama", seed: int = 0, **sizes):
    """PPO's critic: a token classifier with one output, V(s_t) at every position."""
    cfg = config(tokenizer, arch, **sizes)
    cfg.num_labels = 1
    cfg.classifier_dropout = 0.0          # transformers' token-classifier head defaults to 0.1
    return _seeded(lambda: AutoModelForTokenClassification.from_config(cfg), seed)


def reward_model(tokenizer, arch: str = "llama", seed: int = 0, **sizes):
    """A Bradley-Terry reward model: a sequence classifier with one output, read at the last real
    token (``refimpl.recipes.sequence_scores`` finds it from the attention mask)."""
    cfg = config(tokenizer, arch, **sizes)
    cfg.num_labels = 1
    return _seeded(lambda: AutoModelForSequenceClassification.from_config(cfg), seed)


def save(model, tokenizer, path: str | os.PathLike) -> Path:
    """``save_pretrained`` the model and its tokenizer into ``path``; returns the path."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """The tokenizer saved at a local path (never a hub name), left-padding; a tokenizer without
    a pad token (GPT-2's, Llama 3's) pads with its eos token, as trainers commonly do."""
    from transformers import AutoTokenizer
    if not Path(path).is_dir():
        raise ValueError(f"path must be a local directory, got {str(path)!r}")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def check_causal_lm(path: str | os.PathLike) -> None:
    """Refuse, with a ValueError naming ``path``, a directory the loops cannot start from: no
    saved causal LM, a tokenizer without an eos token (a completion ends there), or one that does
    not have every task character as a token of its own (the loops encode completions character
    by character). A missing pad token is fine (eos pads); bos is optional."""
    from transformers import AutoConfig
    if not Path(path).is_dir():
        raise ValueError(f"model must be a local directory, got {str(path)!r}")
    try:
        cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model {path}: not a saved transformers model with its tokenizer "
                         f"({first})") from None
    names = cfg.architectures or []
    if not any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        raise ValueError(f"model {path}: not a causal LM (architectures {names})")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"model {path}: its tokenizer has no eos token")
    unknown = [c for c in CHARS if tokenizer.convert_tokens_to_ids(c) in
               (None, tokenizer.unk_token_id)]
    if unknown:
        raise ValueError(f"model {path}: its tokenizer does not write {''.join(unknown)!r} as "
                         f"one token each (the loops encode completions by character)")


def load_causal_lm(path: str | os.PathLike):
    """The causal LM saved at a local path, in float32 and eval mode."""
    if not Path(path).is_dir():
        raise ValueError(f"path must be a local directory, got {str(path)!r}")
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                 dtype=torch.float32)
    return model.eval()


def load_reward_model(path: str | os.PathLike):
    """The sequence classifier (reward model) saved at a local path, in float32 and eval mode."""
    if not Path(path).is_dir():
        raise ValueError(f"path must be a local directory, got {str(path)!r}")
    return AutoModelForSequenceClassification.from_pretrained(
        str(path), local_files_only=True, dtype=torch.float32).eval()


def dropout_probabilities(model) -> list[float]:
    """Every dropout probability in ``model`` (modules and the attention's ``attention_dropout``):
    the contract's models have dropout 0."""
    out = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    out += [float(getattr(model.config, k)) for k in ("attention_dropout", "attn_pdrop",
            "resid_pdrop", "embd_pdrop", "classifier_dropout", "summary_first_dropout")
            if getattr(model.config, k, None) is not None]
    return out


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
