"""Prompt templates: where the pseudo sentence and the modifier go in the text the server reads.

Plain Python, no torch: training settings and the command line read the default template
without loading a model stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TemplateError

DEFAULT_TEMPLATE = "a photo of {} that {}"
PLACEHOLDER = "{}"
#: Templates by language, named where a template is asked for (``--template ja``). Japanese writes
#: no spaces: the slot comes first, where a photo's subject goes, and the pieces after it are
#: tokenized as the continuation of the text before them (see :mod:`isacir.compose`).
TEMPLATES = {"en": DEFAULT_TEMPLATE, "ja": "{}の写真、{}"}
#: Their forms for an empty modifier, where cutting after the first slot would drop a word.
EMPTY_FORMS = {TEMPLATES["ja"]: "{}の写真"}


def resolve_template(template: str) -> str:
    """A language name from :data:`TEMPLATES` as its template; any other string as it is."""
    return TEMPLATES.get(template, template)


@dataclass(frozen=True)
class PromptTemplate:
    """A template with a pseudo-sentence slot and an optional modifier slot.

    ``full`` is used when a modifier is present and ``empty`` when it is blank. By default the
    empty form is the template cut right after the first placeholder, so ``a photo of {} that {}``
    reads ``a photo of {}`` for an empty modifier, which is exactly the GCD training prompt.
    """

    full: str
    empty: str

    @classmethod
    def parse(cls, template: str | PromptTemplate, empty: str | None = None) -> PromptTemplate:
        if isinstance(template, PromptTemplate):
            return template
        if not isinstance(template, str):
            raise TemplateError(f"template must be a string, got {type(template).__name__}")
        template = resolve_template(template)
        count = template.count(PLACEHOLDER)
        if count not in (1, 2):
            raise TemplateError(
                f"template {template!r} must contain one '{{}}' for the pseudo tokens and optionally a "
                f"second '{{}}' for the modifier, or name a language ({', '.join(TEMPLATES)}); found {count}"
            )
        if empty is None:
            empty = EMPTY_FORMS.get(template)
        if empty is None:
            cut = template.index(PLACEHOLDER) + len(PLACEHOLDER)
            empty = template[:cut]
        if empty.count(PLACEHOLDER) != 1:
            raise TemplateError(f"empty-modifier template {empty!r} must contain exactly one '{{}}'")
        return cls(full=template, empty=empty)

    @property
    def has_modifier_slot(self) -> bool:
        return self.full.count(PLACEHOLDER) == 2

    def pieces(self, with_modifier: bool) -> list[str]:
        """Text around the slots: ``[prefix, suffix]`` or ``[prefix, middle, suffix]``."""
        return (self.full if with_modifier else self.empty).split(PLACEHOLDER)

    def render(self, sentence: str, modifier: str = "") -> str:
        """Plain-text rendering, e.g. to encode a real caption through the same template."""
        if modifier.strip():
            if not self.has_modifier_slot:
                raise TemplateError(f"template {self.full!r} has no modifier slot")
            return self.full.replace(PLACEHOLDER, sentence, 1).replace(PLACEHOLDER, modifier.strip(), 1)
        return self.empty.replace(PLACEHOLDER, sentence, 1)
