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


def test_a_checkpoint_that_declares_its_languages_is_taken_at_its_word(tmp_path):
    """A text tower whose type and vocabulary say nothing (a custom one, trained bilingual) names
    its languages in open_clip_config.json, and the service shows them; the declaration survives a
    re-save and is read from the folder, not from memory."""
    import json

    from isacir.foundation import create_foundation
    from isacir.foundation.openclip import save_openclip_checkpoint
    from isacir.testing import save_tiny_openclip

    name = save_tiny_openclip(tmp_path / "plain")
    plain = create_foundation(name)
    cfg = json.loads((tmp_path / "plain" / "open_clip_config.json").read_text())
    save_openclip_checkpoint(plain.model, tmp_path / "bilingual", cfg["model_cfg"], cfg["preprocess_cfg"], ("en", "ja"))
    assert json.loads((tmp_path / "bilingual" / "open_clip_config.json").read_text())["languages"] == ["en", "ja"]
    bilingual = create_foundation(name.replace(str(tmp_path / "plain"), str(tmp_path / "bilingual")))
    assert bilingual.languages == ("en", "ja") and plain.languages == ("en",)
    assert bilingual.fingerprint == plain.fingerprint  # the same weights: what it reads is metadata


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


ENGLISH_CASES = [("dog", "is red"), ("red car", "make it blue"), ("犬", "同じ形で赤"), ("dress", "")]
JAPANESE_CASES = [("dog", "同じ形で赤"), ("dog", "")]
INVARIANT_CASES = [
    *[("xlmr", w, m, TEMPLATE) for w, m in [*ENGLISH_CASES, ("赤い車", "取っ手なし")]],
    # XLM-R's tokenizer here splits Japanese finely, so any word's pieces end where it does
    *[("xlmr", w, m, JA_TEMPLATE) for w, m in [*JAPANESE_CASES, ("犬", "同じ形で赤"), ("赤い車", "取っ手なし")]],
    *[(family, w, m, TEMPLATE) for family in ("siglip2", "nllb") for w, m in ENGLISH_CASES],
    *[(family, w, m, JA_TEMPLATE) for family in ("siglip2", "nllb") for w, m in JAPANESE_CASES],
]


@pytest.mark.parametrize("family,words,modifier,template", INVARIANT_CASES)
def test_splicing_real_word_embeddings_equals_plain_text(request, family, words, modifier, template):
    """The invariant every family keeps: the words' own embeddings in the slots give the plain text's
    feature, whatever the pooling (XLM-R's mean, SigLIP 2's last position, NLLB's first token).

    The words are taken as they stand in the text: after a space in the English template (a
    tokenizer that writes spaces into its pieces, like Gemma's, gives them a different first piece
    there), first in the Japanese one. A tokenizer that merges a word with the template's next
    characters into one piece cannot be matched by any splice, so the Japanese cases of the smaller
    tokenizers are words whose pieces end where they do."""
    fnd = request.getfixturevalue(family)
    tpl = PromptTemplate.parse(template)
    emb = fnd.embed_words((" " if tpl.full.split("{}")[0].endswith(" ") else "") + words).unsqueeze(0)
    with torch.no_grad():
        spliced = fnd.encode_composed(emb, [modifier], template)
        plain = fnd.encode_text([tpl.render(words, modifier)])
    assert spliced.shape == (1, fnd.embed_dim)
    assert torch.allclose(spliced, plain, atol=1e-5), (spliced - plain).abs().max()
