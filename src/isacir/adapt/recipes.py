"""Named recipes for ``isacir adapt``: the settings the product tells people to deploy.

Kept free of torch so that the command line's hints and the docs renderer can name a recipe
without loading a model. The lab's feedback bench judges each recipe against the learning goals;
the product only serves the name and its flags.
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

#: the ``isacir adapt`` recipe that met every learning goal on every Shapes-CIR seed, judged on
#: fresh test queries: the one the docs and the CLI tell people to deploy
RECIPE_TO_DEPLOY: dict[str, Any] = {"lora_rank": 4, "lora_attention": True, "soup": 5, "folds": 5}


def recipe_flags(recipe: dict[str, Any] = RECIPE_TO_DEPLOY) -> str:
    """``isacir adapt``'s options for a recipe (the pair always chosen by ``--tune``)."""
    flags = [f"--lora-rank {recipe['lora_rank']}"] if recipe.get("lora_rank") else []
    flags += ["--lora-attention"] if recipe.get("lora_attention") else []
    flags += [f"--soup {recipe['soup']}"] if recipe.get("soup", 1) > 1 else []
    flags += ["--tune"] + ([f"--folds {recipe['folds']}"] if recipe.get("folds") else [])
    return " ".join(flags)
