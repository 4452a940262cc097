"""Editors: interventions in the reverse process. One editor per module; the registry
imports every module of this package on its first lookup, which registers them."""

from videdit.editing.registry import EDITORS, EditContext, EditorSpec, EditPlan, get_editor, register_editor

__all__ = ["EDITORS", "EditContext", "EditPlan", "EditorSpec", "get_editor", "register_editor"]
