"""Build a ``tokenizers.Tokenizer`` from the tokenizer a GGUF file describes in its metadata.

A GGUF carries no ``tokenizer.json``: it stores llama.cpp's description (``tokenizer.ggml.*``:
model kind, tokens, merges, scores, token types, special ids, BOS/EOS flags, chat template).
Two kinds are rebuilt here, the way transformers' GGUF loader rebuilds them, so that ids match
``AutoTokenizer.from_pretrained(folder, gguf_file=...)``:

- ``gpt2``: byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen 2...); the pre-tokenizer split comes
  from ``tokenizer.ggml.pre``.
- ``llama``: sentencepiece-style BPE with byte fallback, ``▁`` for spaces (Metaspace) and
  merges taken from the file or derived from the token scores.

Control tokens (type 3) become special added tokens (one id each, dropped by
``skip_special_tokens``); user-defined ones (type 4) become plain added tokens.
The file reading lives in ``gguf_metadata``; wrapping into our ``Tokenizer`` in ``loader``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from tgi_core.tokenization.gguf_metadata import GGUFValue

__all__ = ["GGUFTokenizerError", "GGUFTokenizerInfo", "build_gguf_tokenizer", "bytes_to_unicode"]

_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4
_METASPACE = "\u2581"

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# `tokenizer.ggml.pre` -> the split regex its merges were learned with (llama.cpp's names).
# Anything not listed keeps GPT-2's byte-level regex, as transformers does; for "smollm" that
# differs from SmolLM's own tokenizer.json (which isolates digits first) only in how a run of
# spaces before a digit is split, and matching transformers is what the project compares to.
PRE_TOKENIZER_SPLITS: dict[str, str] = {
    **dict.fromkeys(
        (
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
            "dbrx",
            "smaug-bpe",
        ),
        _LLAMA3_SPLIT,
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}


class GGUFTokenizerError(ValueError):
    """The GGUF metadata does not describe a tokenizer we can build."""


@dataclass(frozen=True)
class GGUFTokenizerInfo:
    """A tokenizer rebuilt from GGUF metadata, with what the file says around it."""

    backend: Tokenizer
    bos_token: str | None
    eos_token: str | None
    eos_token_ids: tuple[int, ...]
    chat_template: str | None
    max_model_length: int | None


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used to spell byte-level tokens."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    num_extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + num_extra)
            num_extra += 1
    return table


def _get(metadata: Mapping[str, GGUFValue], key: str, kind: type) -> GGUFValue | None:
    value = metadata.get(key)
    if value is None:
        return None
    if kind is int and isinstance(value, bool):
        raise GGUFTokenizerError(f"GGUF key {key} should be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise GGUFTokenizerError(f"GGUF key {key} should be {kind.__name__}, got {value!r}")
    return value


def _get_int(metadata: Mapping[str, GGUFValue], key: str) -> int | None:
    value = _get(metadata, key, int)
    return value if isinstance(value, int) else None


def _get_str(metadata: Mapping[str, GGUFValue], key: str) -> str | None:
    value = _get(metadata, key, str)
    return value if isinstance(value, str) else None


def _get_bool(metadata: Mapping[str, GGUFValue], key: str) -> bool | None:
    value = _get(metadata, key, bool)
    return value if isinstance(value, bool) else None


def _get_list(metadata: Mapping[str, GGUFValue], key: str) -> list[GGUFValue]:
    value = _get(metadata, key, list)
    return value if isinstance(value, list) else []


def _split_merge(merge: str, vocab: Mapping[str, int]) -> tuple[str, str]:
    left, _, right = merge.partition(" ")
    if left in vocab and right in vocab:
        return left, right
    # a vocabulary with real spaces in its tokens: find the space that splits into two tokens
    for match in re.finditer(" ", merge):
        left, right = merge[: match.start()], merge[match.end() :]
        if left in vocab and right in vocab:
            return left, right
    raise GGUFTokenizerError(f"GGUF merge {merge!r} does not split into two vocabulary tokens")


def derive_merges(vocab: Mapping[str, int], scores: Mapping[str, float]) -> list[tuple[str, str]]:
    """Merges implied by a sentencepiece vocabulary: every split of a token into two tokens,
    best score first (transformers' ``generate_merges``, so ties break the same way)."""
    ranked: list[tuple[str, str, float]] = []
    for token, score in scores.items():
        pairs = [
            (token[:i], token[i:], score)
            for i in range(1, len(token))
            if token[:i] in vocab and token[i:] in vocab
        ]
        pairs.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        ranked.extend(pairs)
    ranked.sort(key=lambda pair: (pair[2], len(pair[0]), len(pair[1])), reverse=True)
    return [(left, right) for left, right, _ in ranked]


def _merges(
    metadata: Mapping[str, GGUFValue], vocab: Mapping[str, int], tokens: Sequence[str]
) -> list[tuple[str, str]]:
    merges = _get_list(metadata, "tokenizer.ggml.merges")
    if merges:
        return [_split_merge(str(merge), vocab) for merge in merges]
    scores = [s for s in _get_list(metadata, "tokenizer.ggml.scores") if isinstance(s, float)]
    if len(scores) != len(tokens):
        raise GGUFTokenizerError("the GGUF file has neither merges nor one score per token")
    return derive_merges(vocab, dict(zip(tokens, scores, strict=True)))


def _byte_level_bpe(metadata: Mapping[str, GGUFValue], tokens: Sequence[str]) -> Tokenizer:
    spelling = bytes_to_unicode()
    alphabet = frozenset(spelling.values())
    # A token spelled outside the byte alphabet (rare llama.cpp exports) is respelled
    # from its bytes.
    vocab = {
        token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode()): index
        for index, token in enumerate(tokens)
    }
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=_merges(metadata, vocab, tokens),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    split = PRE_TOKENIZER_SPLITS.get(_get_str(metadata, "tokenizer.ggml.pre") or "default")
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(metadata: Mapping[str, GGUFValue], tokens: Sequence[str]) -> Tokenizer:
    vocab = {token: index for index, token in enumerate(tokens)}
    unk_id = _get_int(metadata, "tokenizer.ggml.unknown_token_id")
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=_merges(metadata, vocab, tokens),
            unk_token=tokens[unk_id] if unk_id is not None and unk_id < len(tokens) else None,
            fuse_unk=True,
            byte_fallback=True,
            dropout=None,
        )
    )
    add_space_prefix = _get_bool(metadata, "tokenizer.ggml.add_space_prefix")
    prepend = add_space_prefix is not False  # sentencepiece's default is to add it
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=_METASPACE, prepend_scheme="first" if prepend else "never", split=False
    )
    steps = [decoders.Replace(_METASPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prepend:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


_BUILDERS: dict[str, Callable[[Mapping[str, GGUFValue], Sequence[str]], Tokenizer]] = {
    "gpt2": _byte_level_bpe,
    "llama": _sentencepiece_bpe,
}
# llama.cpp adds BOS to sentencepiece vocabularies unless told otherwise, not to byte-level ones.
_DEFAULT_ADD_BOS = {"gpt2": False, "llama": True}


def _add_special_tokens(
    backend: Tokenizer,
    metadata: Mapping[str, GGUFValue],
    tokens: Sequence[str],
    named: Sequence[str | None],
) -> None:
    token_types = _get_list(metadata, "tokenizer.ggml.token_type")
    byte_level = _get_str(metadata, "tokenizer.ggml.model") == "gpt2"
    alphabet = frozenset(bytes_to_unicode().values())
    vocab = backend.get_vocab(with_added_tokens=False)
    control = [
        token
        for token, token_type in zip(tokens, token_types, strict=False)
        # a byte-level "control" token spelled outside the byte alphabet is a llama.cpp mislabel
        if token_type == _TOKEN_TYPE_CONTROL and (not byte_level or set(token) <= alphabet)
    ]
    for token in named:  # BOS/EOS/UNK/PAD are special even when typed otherwise (UNK is type 2)
        if token is not None and token not in control:
            control.append(token)
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    user_defined = [
        AddedToken(token, normalized=False, special=False)
        for token, token_type in zip(tokens, token_types, strict=False)
        if token_type == _TOKEN_TYPE_USER_DEFINED and token in vocab
    ]
    if user_defined:
        backend.add_tokens(user_defined)


def _post_processor(
    metadata: Mapping[str, GGUFValue], model: str, bos: str | None, eos: str | None
) -> processors.TemplateProcessing | None:
    add_bos = _get_bool(metadata, "tokenizer.ggml.add_bos_token")
    add_bos = _DEFAULT_ADD_BOS[model] if add_bos is None else add_bos
    add_eos = bool(_get_bool(metadata, "tokenizer.ggml.add_eos_token"))
    bos_id = _get_int(metadata, "tokenizer.ggml.bos_token_id")
    eos_id = _get_int(metadata, "tokenizer.ggml.eos_token_id")
    special_tokens: list[tuple[str, int]] = []
    if add_bos and bos is not None and bos_id is not None:
        special_tokens.append((bos, bos_id))
    if add_eos and eos is not None and eos_id is not None:
        special_tokens.append((eos, eos_id))
    if not special_tokens:
        return None
    prefix = [bos] if add_bos and bos is not None and bos_id is not None else []
    suffix = [eos] if add_eos and eos is not None and eos_id is not None else []
    single = " ".join([*prefix, "$A:0", *suffix])
    pair = " ".join([single, *prefix, "$B:1", *suffix])
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special_tokens)


def _token_at(tokens: Sequence[str], metadata: Mapping[str, GGUFValue], key: str) -> str | None:
    token_id = _get_int(metadata, key)
    return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None


def _eos_token_ids(metadata: Mapping[str, GGUFValue]) -> tuple[int, ...]:
    # llama.cpp ends generation on any end-of-generation token: EOS, end-of-turn, end-of-message.
    ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        token_id = _get_int(metadata, f"tokenizer.ggml.{key}")
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    return tuple(ids)


def build_gguf_tokenizer(metadata: Mapping[str, GGUFValue]) -> GGUFTokenizerInfo:
    """Rebuild the tokenizer described by GGUF ``metadata`` (see ``read_gguf_metadata``).

    Raises:
        GGUFTokenizerError: no tokenizer in the metadata, or a kind we cannot build.
    """
    model = _get_str(metadata, "tokenizer.ggml.model")
    tokens = [str(token) for token in _get_list(metadata, "tokenizer.ggml.tokens")]
    if model is None or not tokens:
        raise GGUFTokenizerError("the GGUF file describes no tokenizer (tokenizer.ggml.*)")
    builder = _BUILDERS.get(model)
    if builder is None:
        raise GGUFTokenizerError(
            f"cannot build a tokenizer of kind {model!r} from GGUF; supported: {sorted(_BUILDERS)}"
        )
    backend = builder(metadata, tokens)
    bos = _token_at(tokens, metadata, "tokenizer.ggml.bos_token_id")
    eos = _token_at(tokens, metadata, "tokenizer.ggml.eos_token_id")
    named = [
        bos,
        eos,
        _token_at(tokens, metadata, "tokenizer.ggml.unknown_token_id"),
        _token_at(tokens, metadata, "tokenizer.ggml.padding_token_id"),
    ]
    _add_special_tokens(backend, metadata, tokens, named)
    post_processor = _post_processor(metadata, model, bos, eos)
    if post_processor is not None:
        backend.post_processor = post_processor
    architecture = _get_str(metadata, "general.architecture")
    context_length = _get_int(metadata, f"{architecture}.context_length") if architecture else None
    return GGUFTokenizerInfo(
        backend=backend,
        bos_token=bos,
        eos_token=eos,
        eos_token_ids=_eos_token_ids(metadata),
        chat_template=_get_str(metadata, "tokenizer.chat_template"),
        max_model_length=context_length,
    )
