"""Editors: interventions in the reverse process. Importing this package registers them."""

from videdit.editing import plain  # noqa: F401  (registers "plain")
from videdit.editing import blended, diffedit, differential, sega  # noqa: F401  (register themselves)
from videdit.editing import prompt_to_prompt  # noqa: F401  (registers "prompt_to_prompt")
from videdit.editing import cross_image, masactrl, plug_and_play  # noqa: F401  (attention editors)
from videdit.editing.registry import EDITORS, EditContext, EditPlan, get_editor, register_editor

__all__ = ["EDITORS", "EditContext", "EditPlan", "get_editor", "register_editor"]
