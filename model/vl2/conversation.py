"""The official ``deepseek`` conversation template (``sep_style=DeepSeek``), for single user turns.

``<|User|>: {content.strip()}\\n\\n<|Assistant|>:`` with an optional ``{system}\\n\\n`` prefix when a system
message is set; no trailing space, no EOS. Prior assistant turns (``history``) end with the EOS string
``<｜end▁of▁sentence｜>`` exactly as ``Conversation.get_prompt`` writes them.

Caveat for history: this is the official *string*. The official conversations path builds multi-turn *ids*
per message (answer tokens + EOS right after the ``<|Assistant|>:`` tokens, no space) and ignores
``system_prompt`` for ids, so tokenising this string matches the official ids only for single-turn requests
(with or without a system message, as the official prompt path ``apply_sft_format=True`` does).
"""

from __future__ import annotations

from typing import Sequence

USER, ASSISTANT = "<|User|>", "<|Assistant|>"
SEP, SEP2 = "\n\n", "<｜end▁of▁sentence｜>"
STOP_STRINGS = ("User:", SEP2)


def format_prompt(content: str, system: str = "", history: Sequence[tuple[str, str]] = ()) -> str:
    """One request in the template: ``history`` is (user, assistant) pairs before ``content``.

    Equals the official ``format_prompts`` (prompt path, ``apply_sft_format=True``), whose final ``.strip()``
    only matters for a whitespace-only system message.
    """
    messages: list[tuple[str, str]] = []
    for user, answer in history:
        messages += [(USER, user.strip()), (ASSISTANT, answer.strip())]
    messages += [(USER, content.strip()), (ASSISTANT, "")]
    out = system + SEP if system else ""
    for i, (role, message) in enumerate(messages):
        out += f"{role}: {message}{(SEP, SEP2)[i % 2]}" if message else f"{role}:"
    return out.strip()
