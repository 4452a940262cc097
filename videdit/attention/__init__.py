"""Attention processors, installed for the duration of a ``with`` block and always restored;
modules that intervene in attention, composed one processor per layer."""

from videdit.attention.install import attention_processors, match_layers
from videdit.attention.processor import AttentionModule, AttnCall, ComposedProcessor, compose
from videdit.attention.store import CrossAttentionStore

__all__ = ["AttentionModule", "AttnCall", "ComposedProcessor", "CrossAttentionStore", "attention_processors", "compose", "match_layers"]
