"""Editors: interventions in the reverse process. Importing this package registers them."""

from videdit.editing import plain  # noqa: F401  (registers "plain")
from videdit.editing.registry import EDITORS, EditContext, EditPlan, get_editor, register_editor

__all__ = ["EDITORS", "EditContext", "EditPlan", "get_editor", "register_editor"]
