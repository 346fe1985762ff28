"""What ``isacir adapt`` trains with: its settings, and where it keeps its resumable checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    pass


CHECKPOINT_NAME = ".adapt-checkpoint.pt"


#: the refit's own checkpoint: a run killed during the refit resumes it, the judged run being done
REFIT_CHECKPOINT_NAME = ".adapt-refit-checkpoint.pt"


#: one per fold of ``--folds``: a killed run resumes the fold it was in, the done ones load at once
FOLD_CHECKPOINT_NAME = ".adapt-fold{}-checkpoint.pt"


#: the automatic recipe choice's folds, per candidate recipe: ``.format(recipe)`` leaves the fold's ``{}``
CANDIDATE_CHECKPOINT_NAME = ".adapt-{}-fold{{}}-checkpoint.pt"


#: Two gallery items whose stored vectors agree this closely are one picture to the system (the
#: same photo indexed twice): no query tells them apart, so either one answers a query that the
#: operator answered with the other, and neither may be the other's negative.
DUPLICATE_COSINE = 1.0 - 1e-5


#: a logit far below any cosine / temperature, for candidates that must not count
_MASKED = -1e4


@dataclass
class AdaptSettings:
    holdout: float = 0.2
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    temperature: float = 0.05
    hidden: int = 256
    #: train the residual token adapter (off: it stays the identity, only the vocabulary learns)
    token_adapter: bool = True
    vocab: bool = True
    vocab_min_count: int = 2
    vocab_max_rows: int = 512
    #: LoRA rank on the text tower's linear layers (0: off, the default until a benchmark shows
    #: it helps) and its alpha (the update is scaled by alpha / rank)
    lora_rank: int = 0
    lora_alpha: float = 8.0
    #: LoRA (at ``lora_rank``) also on the text tower's attention projections
    lora_attention: bool = False
    #: a residual linear map on the composed query (a learned metric on the stored vectors)
    query_head: bool = False
    #: random gallery items per step as extra negatives (drawn from a pool of ``negative_pool``)
    gallery_negatives: int = 1024
    negative_pool: int = 50000
    replay_weight: float = 1.0
    #: also replay training tokens paired with other queries' texts (needed when every query was judged)
    replay_shuffled: bool = True
    weight_decay: float = 0.0
    max_replay: int = 2000
    interpolation: float = 1.0
    #: the previous version's top N on each training query join its negatives (0: off). The
    #: operator saw them and named another item, so they are the near ties that steal first place
    hard_negatives: int = 0
    #: focal distillation (positive-congruent training): keep the previous version's score
    #: distribution over the candidates on queries it answered right at rank 1, with this weight
    #: (0: off), plus ``focal_base`` on every query
    focal_weight: float = 0.0
    focal_base: float = 0.0
    #: each word of a judged query's modifier is dropped with this chance at every step (0: off),
    #: so that the adapter cannot lean on the exact words one operator happened to type
    word_dropout: float = 0.0
    #: L2 weight on the learned vocabulary rows' distance from the foundation's own embedding of
    #: those words (0: off): new rows stay near what the tower already reads
    vocab_decay: float = 0.0
    #: the top-1 guard's cosine margin (0: off); see :mod:`isacir.adapter.guard`
    guard_margin: float = 0.0
    #: choose interpolation and guard margin on the held-out feedback (the given ones stand if
    #: no pair is promotable there)
    tune: bool = False
    #: after judging (and with ``tune``, tuning) the recipe on the held-out feedback, train it once
    #: more on every learnable query, held-out ones included, and save that adapter
    refit: bool = False
    #: judge the recipe (and with ``tune``, choose the pair) by K-fold cross-validation instead of
    #: one hold-out: K adapters, each trained without one K-th of the queries, answer that K-th,
    #: and the counts are pooled over every query; the saved adapter is then trained on all of
    #: them, as with ``refit`` (0: off, ``holdout`` judges)
    folds: int = 0
    #: every adapter the recipe trains (the judged ones, the refit, each fold) is the uniform soup
    #: of this many, trained with seeds ``seed``, ``seed + 1``, ... (1: one adapter); see
    #: :mod:`isacir.adapt.soup`. Averaging damps what each learned by chance, which is what flips
    #: earlier first places; it costs this many trainings and nothing at serving time
    soup: int = 1
    #: ``custom``: train exactly these settings. ``auto`` (what ``isacir adapt`` does by default):
    #: weigh the candidate recipes by folds and serve the winner's fold soup (:mod:`.choose`); a
    #: candidate's name judges and serves that one recipe the same way
    recipe: str = "custom"
    #: learn from the oldest N logged queries only (None: all of them)
    max_queries: int | None = None
    save_every: int = 50

    @classmethod
    def auto(cls, **fields: object) -> AdaptSettings:
        """The product's default: the recipe chosen by folds (``isacir adapt`` with no recipe flags)."""
        return cls(recipe="auto", **fields)  # type: ignore[arg-type]

    def check(self) -> None:
        from .recipes import RECIPE_CHOICES

        if self.recipe not in RECIPE_CHOICES:
            raise ConfigError(f"--recipe must be one of {', '.join(RECIPE_CHOICES)}, got {self.recipe!r}")
        if self.steps < 1 or self.batch_size < 1 or self.hidden < 1:
            raise ConfigError("steps, batch size and hidden width must be at least 1")
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"--holdout must be within [0, 1), got {self.holdout}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError("learning rate and temperature must be positive")
        if not 0.0 <= self.interpolation <= 1.0:
            raise ConfigError(f"--interpolation must be within 0..1, got {self.interpolation}")
        if not 0.0 <= self.guard_margin <= 2.0:
            raise ConfigError(f"--guard-margin must be within 0..2 (a cosine difference), got {self.guard_margin}")
        if self.lora_rank < 0 or self.lora_alpha <= 0:
            raise ConfigError(f"--lora-rank must be >= 0 and --lora-alpha > 0, got {self.lora_rank}, {self.lora_alpha}")
        if self.lora_attention and not self.lora_rank:
            raise ConfigError("--lora-attention needs --lora-rank above 0")
        if self.replay_weight < 0:
            raise ConfigError("--replay-weight must not be negative")
        if self.hard_negatives < 0 or self.focal_weight < 0 or self.focal_base < 0:
            raise ConfigError(
                f"--hard-negatives, --focal-weight and --focal-base must not be negative, got "
                f"{self.hard_negatives}, {self.focal_weight}, {self.focal_base}"
            )
        if not 0.0 <= self.word_dropout < 1.0:
            raise ConfigError(f"--word-dropout must be within [0, 1), got {self.word_dropout}")
        if self.vocab_decay < 0:
            raise ConfigError(f"--vocab-decay must not be negative, got {self.vocab_decay}")
        if self.soup < 1:
            raise ConfigError(f"--soup must be at least 1 (one adapter), got {self.soup}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ConfigError("--max-queries must be at least 1")
        if self.folds == 1 or self.folds < 0:
            raise ConfigError(f"--folds must be 0 (one hold-out) or at least 2, got {self.folds}")
        if self.recipe != "custom" and (self.refit or self.soup > 1):
            raise ConfigError(
                f"--recipe {self.recipe} serves the soup of its fold adapters: --refit and --soup belong to "
                "--recipe custom"
            )
        if self.refit and self.holdout <= 0 and not self.folds:
            raise ConfigError("--refit trains again on the held-out feedback after judging: it needs --holdout > 0")
