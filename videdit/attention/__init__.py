"""Attention processors, installed for the duration of a ``with`` block and always restored."""

from videdit.attention.install import attention_processors, match_layers

__all__ = ["attention_processors", "match_layers"]
