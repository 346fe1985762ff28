"""Named recipes for ``isacir adapt``: the settings the product tells people to deploy.

Kept free of torch so that settings can be checked and named without loading a model. The lab's
feedback bench judges the default against the learning goals.
"""

from __future__ import annotations

from typing import Any

#: the recipes ``isacir adapt`` weighs by default (``--recipe auto``), by name: the fields each sets
#: on :class:`~isacir.adapt.AdaptSettings`. ``vocab`` is the residual token adapter plus rows for the
#: operators' words; ``lora-attn`` adds rank-4 LoRA on the text tower's linear layers and attention
CANDIDATE_RECIPES: dict[str, dict[str, Any]] = {
    "vocab": {"lora_rank": 0, "lora_attention": False, "query_head": False},
    "lora-attn": {"lora_rank": 4, "lora_attention": True, "query_head": False},
}

#: the folds that judge each candidate (``--folds`` overrides): the served adapter is the soup of
#: the winner's fold adapters, so this is also the soup's size
AUTO_FOLDS = 4

#: what ``--recipe`` accepts: ``auto`` (weigh every candidate), one candidate's name (judge and
#: serve it the same way), or ``custom`` (train exactly the settings given, as before)
RECIPE_CHOICES = ("auto", *CANDIDATE_RECIPES, "custom")
