"""Each loss against a straightforward reference computation."""

import math

import torch
import torch.nn.functional as F

from isacir.training.losses import (
    Temperature,
    gcd_loss,
    hardest_negatives,
    lar_itm_loss,
    lar_patch_loss,
    token_patch_scores,
    word_prior_loss,
)


def _ce(row, target):
    return -(row[target] - torch.logsumexp(row, 0))


def test_gcd_is_symmetric_info_nce():
    torch.manual_seed(0)
    q, g = torch.randn(5, 8), torch.randn(5, 8)
    scale = 12.5
    qn, gn = F.normalize(q, dim=-1), F.normalize(g, dim=-1)
    total = 0.0
    for i in range(5):
        total += _ce(torch.stack([scale * qn[i] @ gn[j] for j in range(5)]), i)
        total += _ce(torch.stack([scale * gn[i] @ qn[j] for j in range(5)]), i)
    assert torch.allclose(gcd_loss(q, g, scale), total / 10, atol=1e-5)


def test_lar_patch_reference():
    torch.manual_seed(1)
    t, p = torch.randn(3, 4, 6), torch.randn(3, 7, 6)
    tn, pn = F.normalize(t, dim=-1), F.normalize(p, dim=-1)
    scores = torch.zeros(3, 3)
    for i in range(3):
        for j in range(3):
            scores[i, j] = sum(max(float(tn[i, k] @ pn[j, m]) for m in range(7)) for k in range(4)) / 4
    assert torch.allclose(token_patch_scores(tn, pn), scores, atol=1e-5)
    scale = 7.0
    ref = sum(_ce(scale * scores[i], i) + _ce(scale * scores[:, i], i) for i in range(3)) / 6
    assert torch.allclose(lar_patch_loss(t, p, scale), ref, atol=1e-5)


def test_itm_loss_and_hard_negatives():
    sim = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.5, 0.4], [0.7, 0.1, 0.95]])
    assert hardest_negatives(sim).tolist() == [1, 2, 0]
    pos, neg = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    sig = torch.sigmoid
    ref = 0.5 * (-(torch.log(sig(pos))).mean() - torch.log(1 - sig(neg)).mean())
    assert torch.allclose(lar_itm_loss(pos, neg), ref, atol=1e-6)


def test_temperature_learnable_fixed_and_clamped():
    t = Temperature(0.07)
    assert math.isclose(t.scale().item(), 1 / 0.07, rel_tol=1e-5) and t.log_scale.requires_grad
    fixed = Temperature(0.05, learnable=False)
    assert not any(p.requires_grad for p in fixed.parameters()) and math.isclose(fixed.scale().item(), 20, rel_tol=1e-5)
    assert math.isclose(Temperature(0.001).scale().item(), 100.0, rel_tol=1e-5)


def test_word_prior_zero_on_words_and_chunking_is_exact():
    torch.manual_seed(0)
    vocab = torch.randn(50, 16)
    on_words = (3.0 * vocab[[4, 17, 33, 49]]).view(2, 2, 16)  # scale must not matter: cosine
    assert word_prior_loss(on_words, vocab).abs() < 1e-6
    tokens = torch.randn(3, 4, 16)
    ref = (1 - (F.normalize(tokens.view(-1, 16), dim=-1) @ F.normalize(vocab, dim=-1).T).max(1).values).mean()
    for chunk in (7, 50, 8192):
        assert torch.allclose(word_prior_loss(tokens, vocab, chunk=chunk), ref, atol=1e-6)
    assert ref > 0.1
    # gradients reach the tokens, never the (frozen) vocabulary
    tokens.requires_grad_(True)
    vocab.requires_grad_(True)
    word_prior_loss(tokens, vocab).backward()
    assert tokens.grad.abs().sum() > 0 and vocab.grad is None
