import pytest
import torch
import torch.nn.functional as F

from isacir.compose import (
    PromptTemplate,
    TokenizerAdapter,
    average_groups,
    build_composed_inputs,
    expand_modifiers,
    max_pseudo_tokens,
    splice,
)
from isacir.errors import PseudoTokenError, TemplateError


class WordAdapter(TokenizerAdapter):
    """Whitespace tokenizer with a fixed small context, to check layout arithmetic exactly."""

    def __init__(self, context_length=12):
        self.context_length = context_length
        self.bos, self.eos, self.pad_id, self.placeholder_id = [1], [2], 0, 3
        self.pad_to = "max"
        self.vocab: dict[str, int] = {}

    def encode(self, text):
        return [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]


def test_template_parse_and_empty_form():
    t = PromptTemplate.parse("a photo of {} that {}")
    assert t.empty == "a photo of {}"
    assert t.render("dog", "is red") == "a photo of dog that is red"
    assert t.render("dog", "  ") == "a photo of dog"
    assert PromptTemplate.parse("{} , {}").empty == "{}"
    with pytest.raises(TemplateError, match="found 0"):
        PromptTemplate.parse("a photo")
    with pytest.raises(TemplateError, match="found 3"):
        PromptTemplate.parse("{} {} {}")


def test_layout_slots_and_truncation():
    ad = WordAdapter(context_length=12)
    t = PromptTemplate.parse("a photo of {} that {}")
    # fixed: bos + 3 prefix + N + 1 middle + eos = 6 + N; budget for the modifier = 6 - N
    inputs = build_composed_inputs(ad, t, 2, ["one two three four five six seven", ""])
    ids, slots = inputs.input_ids, inputs.slot_mask
    assert ids.shape == (2, 12)
    assert slots.sum(1).tolist() == [2, 2]
    assert slots[0].nonzero().flatten().tolist() == [4, 5]
    assert inputs.truncated == [3, 0]  # 7 modifier words, room for 4
    assert ids[0, -1].item() == 2  # EOT survives truncation
    row1 = ids[1][inputs.attention_mask[1].bool()].tolist()
    assert row1 == [1, ad.vocab["a"], ad.vocab["photo"], ad.vocab["of"], 3, 3, 2]  # empty form: no "that"
    assert max_pseudo_tokens(ad, t) == 6
    build_composed_inputs(ad, t, 6, ["x y z"])  # N at the limit fits; the modifier is dropped entirely
    with pytest.raises(PseudoTokenError, match="do not fit"):
        build_composed_inputs(ad, t, 7, ["x"])


def test_modifier_without_slot_is_an_error():
    ad = WordAdapter()
    with pytest.raises(TemplateError, match="no modifier slot"):
        build_composed_inputs(ad, PromptTemplate.parse("a photo of {}"), 1, ["red"])


def test_splice_replaces_only_slots_and_is_differentiable():
    embeds = torch.randn(2, 5, 4)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1:3] = True
    mask[1, 2:4] = True
    pseudo = torch.randn(2, 2, 4, requires_grad=True)
    out = splice(embeds, mask, pseudo)
    assert torch.equal(out[0, 1:3], pseudo[0].detach())
    assert torch.equal(out[1, 2:4], pseudo[1].detach())
    assert torch.equal(out[~mask], embeds[~mask])
    out.sum().backward()
    assert torch.equal(pseudo.grad, torch.ones_like(pseudo))


def test_expand_modifiers_and_errors():
    texts, owner = expand_modifiers(["a", ["b", "c"], ""], 3)
    assert texts == ["a", "b", "c", ""] and owner == [0, 1, 1, 2]
    assert expand_modifiers(None, 2) == (["", ""], [0, 1])
    assert expand_modifiers("red", 2) == (["red", "red"], [0, 1])
    with pytest.raises(PseudoTokenError, match="2 modifiers for 3 queries"):
        expand_modifiers(["a", "b"], 3)
    with pytest.raises(PseudoTokenError, match="empty list"):
        expand_modifiers([[]], 1)
    with pytest.raises(PseudoTokenError, match="must be a string"):
        expand_modifiers([[3]], 1)


def test_average_groups_matches_manual():
    feats = torch.randn(4, 8)
    out = average_groups(feats, [0, 1, 1, 2], 3, normalize=True)
    n = F.normalize(feats, dim=-1)
    expected = torch.stack([n[0], F.normalize((n[1] + n[2]) / 2, dim=0), n[3]])
    assert torch.allclose(out, expected, atol=1e-6)
