"""Writes tests/model/data/tokenizer/: a small byte-level BPE tokenizer in the DeepSeek-VL2 release layout
(``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``) with the official special tokens.

Ids: 0 BOS ``<｜begin▁of▁sentence｜>``, 1 EOS ``<｜end▁of▁sentence｜>``, 2 pad ``<｜▁pad▁｜>``, then the 256 byte
symbols and trained merges, then ``<image>``, ``<|ref|>``, ``<|/ref|>``, ``<|det|>``, ``<|/det|>``,
``<|grounding|>``, ``<|User|>``, ``<|Assistant|>``. Deterministic: re-running gives the same files.
Run: ``.venv/bin/python tests/model/data/make_tokenizer.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = Path(__file__).parent / "tokenizer"
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
EXTRA = ["<image>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", "<|User|>", "<|Assistant|>"]
CORPUS = [
    "Find all the red boxes in the image. The giraffe at the back. Read all the text in the image.",
    "What is written on the label? Describe this picture. Locate the object of the same category.",
    "User: Assistant: the a an of in on at to is are was with for and or not this that there where",
    "[[580, 270, 999, 900]] [[12, 34, 56, 78], [100, 200, 300, 400]] 0123456789",
    "barcode serial number lot expiry date price total warning danger exit door person car truck",
] * 4


def build() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # DeepSeek-style: digits split into groups of at most 3, then byte-level (GPT-2) pre-tokenisation
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, min_frequency=2, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in EXTRA])
    return tok


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tok = build()
    tok.save(str(OUT / "tokenizer.json"))
    # merges in the older "a b" string form, which both old (transformers 4.38's tokenizers) and new readers take
    data = json.loads((OUT / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    (OUT / "tokenizer.json").write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (OUT / "special_tokens_map.json").write_text(json.dumps(
        {**{k: {"content": v, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
            for k, v in specials.items()}, "additional_special_tokens": EXTRA[1:]}, indent=2, ensure_ascii=False))
    (OUT / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": False, "add_eos_token": False, **specials, "clean_up_tokenization_spaces": False,
         "legacy": True, "model_max_length": 4096, "tokenizer_class": "LlamaTokenizerFast",
         "padding_side": "left"}, indent=2, ensure_ascii=False))
    print(f"{len(tok.get_vocab())} tokens -> {OUT}")


if __name__ == "__main__":
    main()
