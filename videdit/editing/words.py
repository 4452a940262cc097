"""Words of a prompt and the token positions that carry them, as the text encoder sees the
prompt (``Model.tokens``: start and end tokens included, so positions index the rows of the
encoded prompt and the key axis of cross-attention)."""

from __future__ import annotations

from typing import Sequence

from videdit.errors import VideditError

_END_OF_WORD = "</w>"   # CLIP's BPE marks a word's last token
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def prompt_words(tokens: Sequence[str]) -> list[tuple[str, list[int]]]:
    """[(word, token positions)] in prompt order; start/end tokens are not words. A word
    ends at a token ending in ``</w>`` (each token is a word for tokenizers without it)."""
    marked = any(t.endswith(_END_OF_WORD) for t in tokens)
    out: list[tuple[str, list[int]]] = []
    text, positions = "", []
    for i, t in enumerate(tokens):
        if t in _SPECIAL:
            continue
        text += t.removesuffix(_END_OF_WORD)
        positions.append(i)
        if not marked or t.endswith(_END_OF_WORD):
            out.append((text, positions))
            text, positions = "", []
    if positions:
        out.append((text, positions))
    return out


def find_word(tokens: Sequence[str], word: str) -> list[int]:
    """Token positions of every occurrence of ``word`` (or of a phrase of several words);
    empty when it does not occur. Case-insensitive, as CLIP's tokenizer is."""
    words = prompt_words(tokens)
    want = word.lower().split()
    if not want:
        return []
    found: list[int] = []
    for i in range(len(words) - len(want) + 1):
        if [w.lower() for w, _ in words[i:i + len(want)]] == want:
            found += [p for _, ps in words[i:i + len(want)] for p in ps]
    return sorted(set(found))


def word_positions(tokens: Sequence[str], word: str, prompt: str) -> list[int]:
    """Like :func:`find_word`, but a word the prompt does not contain is an error naming the
    prompt's words."""
    found = find_word(tokens, word)
    if not found:
        raise VideditError(f"{word!r} is not a word of the prompt {prompt!r}; its words are "
                           f"{[w for w, _ in prompt_words(tokens)]}")
    return found


def spaced_words(words: Sequence[str], pieces: Sequence[str]) -> list[list[int]]:
    """Token positions of each of ``words`` (a prompt split at spaces), ``pieces`` being its tokens
    decoded one by one without the start and end tokens, grouped as prompt-to-prompt's
    ``seq_aligner.get_word_inds`` groups them: a word takes tokens until their decoded length reaches
    its own (positions count the start token, as the encoded prompt's rows do)."""
    out: list[list[int]] = [[] for _ in words]
    ptr = length = 0
    for i, piece in enumerate(pieces):
        if ptr == len(words):
            break
        out[ptr].append(i + 1)
        length += len(piece)
        if length >= len(words[ptr]):
            ptr, length = ptr + 1, 0
    return out
