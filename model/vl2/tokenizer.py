"""The DeepSeek-VL2 tokenizer: a byte-level BPE ``tokenizer.json`` read with the ``tokenizers`` library.

Behaves as the official ``LlamaTokenizerFast`` does for what the processor needs: ``encode`` never adds special
tokens (the processor prepends BOS itself), ``decode`` keeps special tokens (``<|ref|>``, ``<|det|>``... are
part of the answer). Special token strings come from ``special_tokens_map.json`` / ``tokenizer_config.json`` and
``processor_config.json``; a pad token missing from the vocabulary is appended after it, as the official
processor's ``add_special_tokens`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tokenizers import AddedToken, Tokenizer

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE = "<image>"
GROUNDING_TOKENS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>")
ROLE_TOKENS = ("<|User|>", "<|Assistant|>")


class TokenizerError(OSError):
    """The tokenizer files are missing, unreadable, or lack a token the processor needs (an OSError, like the
    other "this checkpoint directory is unusable" errors the analyzer turns into ``AnalyzerUnavailable``)."""


def _token_str(value: Any) -> str | None:
    """A special-token entry is either a string or an AddedToken dict ``{"content": ...}``."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class VL2Tokenizer:
    """``encode(text) -> ids`` (no specials), ``decode(ids) -> text``, ``token_id(str)`` and the ids the
    processor and generation use: ``bos_id``, ``eos_id``, ``pad_id``, ``image_id``."""

    def __init__(self, tokenizer: Tokenizer, bos: str = BOS, eos: str = EOS, pad: str = PAD,
                 image: str = IMAGE) -> None:
        self._tok = tokenizer
        # the official processor adds these as special tokens when absent; with the release files they exist
        missing = [t for t in (pad, image, *GROUNDING_TOKENS, *ROLE_TOKENS) if tokenizer.token_to_id(t) is None]
        if missing:
            tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self.bos_token, self.eos_token, self.pad_token, self.image_token = bos, eos, pad, image
        self.bos_id = self.token_id(bos)
        self.eos_id = self.token_id(eos)
        self.pad_id = self.token_id(pad)
        self.image_id = self.token_id(image)

    @classmethod
    def from_dir(cls, path: str | Path, pad: str = PAD, image: str = IMAGE) -> "VL2Tokenizer":
        """Read ``tokenizer.json`` (+ the special-token names from ``special_tokens_map.json`` or
        ``tokenizer_config.json`` when present) from a checkpoint directory."""
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise TokenizerError(f"{file} does not exist")
        names: dict[str, str] = {}
        try:
            for meta in ("tokenizer_config.json", "special_tokens_map.json"):  # the map wins
                p = path / meta
                if p.is_file():
                    data = json.loads(p.read_text(encoding="utf-8"))
                    for key in ("bos_token", "eos_token", "pad_token"):
                        s = _token_str(data.get(key))
                        if s:
                            names[key] = s
            tok = Tokenizer.from_file(str(file))
        except Exception as e:  # bad JSON; the tokenizers library raises a bare Exception for its own files
            raise TokenizerError(f"{path}: unreadable tokenizer files: {e}") from e
        return cls(tok, bos=names.get("bos_token", BOS), eos=names.get("eos_token", EOS),
                   pad=names.get("pad_token", pad), image=image)

    def token_id(self, token: str) -> int:
        """The id of one token string; ``TokenizerError`` when the vocabulary lacks it."""
        i = self._tok.token_to_id(token)
        if i is None:
            raise TokenizerError(f"token {token!r} is not in the vocabulary")
        return i

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no BOS/EOS (``add_special_tokens=False``); special-token strings in the text
        (``<|ref|>``...) map to their ids."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; special tokens are kept unless asked otherwise (as ``LlamaTokenizerFast.decode``)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)
