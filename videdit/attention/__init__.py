"""Attention processors, installed for the duration of a ``with`` block and always restored;
modules that intervene in attention, composed one processor per layer."""

from videdit.attention.hooks import match_modules, module_hooks
from videdit.attention.install import attention_processors, match_layers
from videdit.attention.layers import (attention_blocks, choose_layers, expand_levels, layer_grids, layers_at, patterns,
                                     select_layers)
from videdit.attention.processor import AttentionModule, AttnCall, ComposedProcessor, compose, merge
from videdit.attention.store import CrossAttentionStore
from videdit.attention.tome import TokenMerging, bipartite_soft_matching_2d, token_merging

__all__ = ["AttentionModule", "AttnCall", "ComposedProcessor", "CrossAttentionStore", "TokenMerging", "attention_blocks",
           "attention_processors", "bipartite_soft_matching_2d", "choose_layers", "compose", "expand_levels",
           "layer_grids", "layers_at", "match_layers", "match_modules", "merge", "module_hooks", "patterns",
           "select_layers", "token_merging"]
