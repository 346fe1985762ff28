"""Multilingual foundations: a text tower other than CLIP's (XLM-RoBERTa, mean pooling) with a
SentencePiece-style tokenizer that reads Japanese, built tiny and random here in the real formats."""

from __future__ import annotations

import pytest
import torch

from isacir.compose import PromptTemplate

TEMPLATE = "a photo of {} that {}"


@pytest.fixture(scope="module")
def xlmr(tmp_path_factory):
    from isacir.foundation import create_foundation
    from isacir.testing import save_tiny_xlmr_openclip

    return create_foundation(save_tiny_xlmr_openclip(tmp_path_factory.mktemp("xlmr"), seed=0))


def test_the_tower_and_its_tokenizer_are_what_the_config_names(xlmr):
    tok = xlmr.tokenizer
    assert type(xlmr.model.text).__name__ == "HFTextEncoder" and xlmr.model.text.config.model_type == "xlm-roberta"
    assert (tok.bos, tok.eos, tok.pad_id) == ([0], [2], 1)
    # the slots are filled with a token the attention never masks (not padding)
    assert tok.placeholder_id != tok.pad_id
    assert xlmr.word_dim == 64 and xlmr.embed_dim == 32
    # Japanese is read as pieces of its own, not as unknowns
    pieces = tok.encode("取っ手なし")
    assert pieces and tok.tokenizer.unk_token_id not in pieces


JA_TEMPLATE = "ja"  # {}の写真、{}; with no modifier, {}の写真


@pytest.mark.parametrize(
    "words,modifier,template",
    [
        ("dog", "is red", TEMPLATE),
        ("red car", "make it blue", TEMPLATE),
        ("犬", "同じ形で赤", TEMPLATE),
        ("赤い車", "取っ手なし", TEMPLATE),
        ("dress", "", TEMPLATE),
        # a template with no spaces: its pieces are glued to the slot and the modifier
        ("犬", "同じ形で赤", JA_TEMPLATE),
        ("赤い車", "取っ手なし", JA_TEMPLATE),
        ("dog", "赤くして", JA_TEMPLATE),
        ("犬", "", JA_TEMPLATE),
    ],
)
def test_splicing_real_word_embeddings_equals_plain_text(xlmr, words, modifier, template):
    """The invariant every family keeps: the words' own embeddings in the slots give the plain text's
    feature, here through mean pooling over the attended positions."""
    emb = xlmr.embed_words(words).unsqueeze(0)
    with torch.no_grad():
        spliced = xlmr.encode_composed(emb, [modifier], template)
        plain = xlmr.encode_text([PromptTemplate.parse(template).render(words, modifier)])
    assert spliced.shape == (1, xlmr.embed_dim)
    assert torch.allclose(spliced, plain, atol=1e-5), (spliced - plain).abs().max()


def test_pseudo_tokens_change_the_query_and_a_batch_composes_at_once(xlmr):
    torch.manual_seed(0)
    tokens = torch.randn(3, 4, xlmr.word_dim) * xlmr.word_embedding_rms()
    with torch.no_grad():
        batch = xlmr.encode_composed(tokens, ["同じ形で赤", "is red", ""], TEMPLATE)
        one = xlmr.encode_composed(tokens[1:2], ["is red"], TEMPLATE)
        other = xlmr.encode_composed(tokens[2:3] * 0.5, ["is red"], TEMPLATE)
    assert batch.shape == (3, xlmr.embed_dim)
    assert torch.allclose(batch[1:2], one, atol=1e-5)
    assert not torch.allclose(one, other, atol=1e-3)  # the slots are read, not masked away


def test_a_language_names_its_template_and_training_keeps_the_words_themselves():
    from isacir.errors import TemplateError
    from isacir.template import TEMPLATES
    from isacir.training.config import TrainConfig

    ja = PromptTemplate.parse("ja")
    assert (ja.full, ja.empty) == ("{}の写真、{}", "{}の写真")
    assert ja.render("犬", " 赤くして ") == "犬の写真、赤くして" and ja.render("犬") == "犬の写真"
    assert PromptTemplate.parse("en") == PromptTemplate.parse(TEMPLATES["en"])
    # a checkpoint records the words it was trained with, not a name whose words could change
    assert TrainConfig(template="ja").template == "{}の写真、{}"
    with pytest.raises(TemplateError, match="name a language"):
        PromptTemplate.parse("fr")


def test_what_a_foundation_reads_is_told_from_its_text_tower(xlmr, openclip_fnd, blip_fnd):
    assert xlmr.languages == ("multilingual",)  # an XLM-RoBERTa tower, whatever its vocabulary size
    assert openclip_fnd.languages == ("en",) and blip_fnd.languages == ("en",)  # CLIP's BPE, BERT


@pytest.fixture(scope="module")
def siglip2(tmp_path_factory):
    from isacir.foundation import create_foundation
    from isacir.testing import save_tiny_siglip2_openclip

    return create_foundation(save_tiny_siglip2_openclip(tmp_path_factory.mktemp("siglip2"), seed=0))


def test_a_siglip2_tower_reads_through_its_gemma_tokenizer(siglip2):
    tok = siglip2.tokenizer
    assert type(tok.tokenizer).__name__.startswith("GemmaTokenizer")
    assert siglip2.model.text.pool_type == "last" and tok.pad_to == "max"  # pooled where padding ends
    # spaces are written into the pieces, so a word after a space is a different piece
    assert tok.encode(" photo") != tok.encode("photo")


@pytest.mark.parametrize(
    "words,modifier,template",
    [
        ("dog", "is red", TEMPLATE),
        ("red car", "make it blue", TEMPLATE),
        ("犬", "同じ形で赤", TEMPLATE),
        ("dress", "", TEMPLATE),
        ("dog", "同じ形で赤", JA_TEMPLATE),
        ("dog", "", JA_TEMPLATE),
    ],
)
def test_splicing_with_a_tokenizer_that_writes_spaces_into_its_pieces(siglip2, words, modifier, template):
    """The space before a slot belongs to the words in it, as in the plain text's own pieces; so the
    words' embeddings are taken as they stand there (after a space in the English template, first in
    the Japanese one). A tokenizer that merges a word with the template's next characters into one
    piece cannot be matched this way, so the cases are words whose pieces end where they do."""
    tpl = PromptTemplate.parse(template)
    before = tpl.full.split("{}")[0]
    emb = siglip2.embed_words((" " if before.endswith(" ") else "") + words).unsqueeze(0)
    with torch.no_grad():
        spliced = siglip2.encode_composed(emb, [modifier], template)
        plain = siglip2.encode_text([tpl.render(words, modifier)])
    assert torch.allclose(spliced, plain, atol=1e-5), (spliced - plain).abs().max()


@pytest.fixture(scope="module")
def nllb(tmp_path_factory):
    from isacir.foundation import create_foundation
    from isacir.testing import save_tiny_nllb_openclip

    return create_foundation(save_tiny_nllb_openclip(tmp_path_factory.mktemp("nllb"), seed=0))


def test_an_nllb_tower_starts_with_its_language_code_and_pools_there(nllb):
    tok = nllb.tokenizer
    assert type(nllb.model.text.transformer).__name__ == "M2M100Encoder"
    assert tok.tokenizer.convert_ids_to_tokens(tok.bos) == ["eng_Latn"] and tok.eos == [tok.tokenizer.eos_token_id]
    assert nllb.languages == ("multilingual",)


@pytest.mark.parametrize(
    "words,modifier,template",
    [
        ("dog", "is red", TEMPLATE),
        ("犬", "同じ形で赤", TEMPLATE),
        ("dress", "", TEMPLATE),
        ("dog", "同じ形で赤", JA_TEMPLATE),
        ("dog", "", JA_TEMPLATE),
    ],
)
def test_splicing_into_an_nllb_tower_equals_plain_text(nllb, words, modifier, template):
    emb = nllb.embed_words(words).unsqueeze(0)
    with torch.no_grad():
        spliced = nllb.encode_composed(emb, [modifier], template)
        plain = nllb.encode_text([PromptTemplate.parse(template).render(words, modifier)])
    assert torch.allclose(spliced, plain, atol=1e-5), (spliced - plain).abs().max()


def test_a_tokenizer_composition_cannot_handle_is_refused_by_name():
    """A text side whose tokenizer cannot take pseudo tokens fails at load, naming it, rather than
    splicing into the wrong places."""
    from open_clip.tokenizer import HFTokenizer

    from isacir.errors import UnknownModelError
    from isacir.foundation.openclip import _tokenizer_adapter

    clips = HFTokenizer.__new__(HFTokenizer)
    clips.tokenizer_mode = "clips"
    with pytest.raises(UnknownModelError, match="'clips' tokenizer mode is not supported"):
        _tokenizer_adapter(clips, 77)

    class Homemade:
        pass

    with pytest.raises(UnknownModelError, match="tokenizer type Homemade is not supported"):
        _tokenizer_adapter(Homemade(), 77)
