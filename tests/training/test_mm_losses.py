"""The multimodal losses on hand-checkable cases: VTC on a known similarity matrix, VTM's
negatives (never a positive, drawn by the weights), MLM's masking rules and statistics,
UTA's values; the temperature clamp."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.fixtures.videotext import TINY_TEXT
from vmstream.models.bert import BertConfig, BertModel
from vmstream.training.mm_losses import (
    SpecialTokens,
    clamp_temp_,
    draw_negatives,
    get_sim,
    mask_tokens,
    mlm_loss,
    negative_weights,
    uta_loss,
    vtc_loss,
    vtm_loss,
)

SPECIAL = SpecialTokens(pad=0, cls=2, sep=3, mask=4, vocab_size=60)


def test_vtc_on_a_known_similarity_matrix():
    v = torch.eye(2)
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # cos: [[1, .6], [0, .8]]
    temp = 0.5
    sim = torch.tensor([[1.0, 0.6], [0.0, 0.8]]) / temp
    want_v2t = -(torch.log_softmax(sim, 1).diagonal()).mean()
    want_t2v = -(torch.log_softmax(sim.T, 1).diagonal()).mean()
    got = vtc_loss(v, t, torch.tensor([0, 1]), temp, all_gather=False)
    assert math.isclose(float(got), float((want_v2t + want_t2v) / 2), rel_tol=1e-6)
    # by hand, row 0 of v2t: -log(e^2 / (e^2 + e^1.2))
    assert math.isclose(
        float(-torch.log_softmax(sim, 1)[0, 0]), -math.log(math.e**2 / (math.e**2 + math.e**1.2)), rel_tol=1e-6
    )


def test_vtc_pairs_of_one_entry_share_the_target():
    v = torch.eye(3)
    t = torch.eye(3)
    sim = torch.eye(3) / 0.1
    got = vtc_loss(v, t, torch.tensor([7, 7, 9]), 0.1, all_gather=False)
    target = torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    want = -(torch.log_softmax(sim, 1) * target).sum(1).mean()
    assert math.isclose(float(got), float(want), rel_tol=1e-6)


def test_per_frame_similarity_is_the_mean_over_frames_after_the_temperature():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 4, 8, generator=g)
    t = torch.randn(5, 8, generator=g)
    v2t, t2v = get_sim(v, t, 0.07)
    want = torch.stack([F.normalize(v[:, k], dim=-1) @ F.normalize(t, dim=-1).T for k in range(4)]).mean(0) / 0.07
    torch.testing.assert_close(v2t, want)
    torch.testing.assert_close(t2v, want.T)


def test_temperature_is_clamped_to_the_official_bounds():
    t = torch.nn.Parameter(torch.tensor(1.0))
    clamp_temp_(t)
    assert float(t.detach()) == 0.5
    t.data.fill_(1e-6)
    clamp_temp_(t)
    assert float(t.detach()) == pytest.approx(0.001)


def test_hard_negatives_never_pick_a_positive_and_follow_the_weights():
    g = torch.Generator().manual_seed(0)
    sim = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.5, 3.0, 1.5, 0.0], [1.0, 1.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0]])
    idx = torch.tensor([0, 1, 0, 2])  # samples 0 and 2 are one entry: positives of each other
    w_v2t, w_t2v, pos = negative_weights(sim, sim.T, idx)
    assert (w_v2t[pos] == 0).all() and (w_t2v[pos] == 0).all()
    n = 20000
    draws = torch.stack([draw_negatives(w_v2t, pos, True, g) for _ in range(n)])  # [n, 4]
    assert not pos[torch.arange(4).expand(n, 4), draws].any()
    for row in range(4):
        freq = torch.bincount(draws[:, row], minlength=4).float() / n
        want = torch.softmax(sim[row] + 1e-4, 0) * ~pos[row]
        torch.testing.assert_close(freq, want / want.sum(), atol=0.015, rtol=0)


def test_random_negatives_are_uniform_over_the_non_positives():
    g = torch.Generator().manual_seed(1)
    pos = torch.eye(3, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = True
    draws = torch.stack([draw_negatives(torch.zeros(3, 3), pos, False, g) for _ in range(3000)])
    assert (draws[:, 0] == 2).all() and (draws[:, 1] == 2).all()
    freq = torch.bincount(draws[:, 2], minlength=3).float() / 3000
    assert freq[2] == 0 and abs(freq[0] - 0.5) < 0.04


def test_a_batch_without_negatives_is_a_clear_error():
    with pytest.raises(ValueError, match="negative"):
        draw_negatives(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool))


def _bert():
    torch.manual_seed(0)
    return BertModel(BertConfig(**dict(TINY_TEXT, encoder_width=12)), mlm_head=True).eval()


def test_vtm_is_one_cross_entropy_over_positive_and_two_negative_pairs():
    bert, head = _bert(), torch.nn.Linear(TINY_TEXT["hidden_size"], 2)
    g = torch.Generator().manual_seed(3)
    B, L = 4, 6
    vis = torch.randn(B, 5, 12, generator=g)
    ids = torch.randint(5, 60, (B, L), generator=g)
    att = torch.ones(B, L, dtype=torch.long)
    att[1, 4:] = 0
    text = bert(ids, att, mode="text")
    vp, tp = torch.randn(B, 8, generator=g), torch.randn(B, 8, generator=g)
    idx = torch.arange(B)
    got = vtm_loss(bert, head, 0.07, vis, text, vp, tp, att, idx, True, torch.Generator().manual_seed(9))
    # the same draws by hand
    s_v2t, s_t2v = get_sim(vp, tp, 0.07)
    w_v2t, w_t2v, pos = negative_weights(s_v2t, s_t2v, idx)
    g2 = torch.Generator().manual_seed(9)
    vneg, tneg = draw_negatives(w_t2v, pos, True, g2), draw_negatives(w_v2t, pos, True, g2)
    logits = []
    for v, t, a in ((vis, text, att), (vis[vneg], text, att), (vis, text[tneg], att[tneg])):
        fused = bert(attention_mask=a, mode="fusion", encoder_embeds=t, encoder_hidden_states=v)
        logits.append(head(fused[:, 0]))
    labels = torch.tensor([1] * B + [0] * 2 * B)
    assert math.isclose(float(got.detach()), float(F.cross_entropy(torch.cat(logits), labels).detach()), rel_tol=1e-5)


def test_mlm_masking_rules_and_statistics():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (400, 32), generator=g)
    ids[:, 0] = SPECIAL.cls
    ids[:, 20] = SPECIAL.sep
    ids[:, 21:] = SPECIAL.pad
    out, labels = mask_tokens(ids, SPECIAL, 0.5, generator=g)
    masked = labels != -100
    assert not masked[:, 0].any() and not masked[:, 21:].any()  # [CLS], [PAD] never
    assert masked[:, 20].float().mean() > 0.4  # the official rule may mask [SEP]
    assert torch.equal(labels[masked], ids[masked])
    assert torch.equal(out[~masked], ids[~masked])
    body = masked[:, 1:21]
    assert abs(body.float().mean() - 0.5) < 0.01
    m = out[masked]
    frac_mask = (m == SPECIAL.mask).float().mean()
    frac_kept = (m == ids[masked]).float().mean()
    frac_random = 1 - frac_mask - frac_kept
    assert abs(frac_mask - 0.8) < 0.01
    assert abs(frac_kept - 0.1) < 0.01  # a random id equal to the original counts as kept (1/60 of 10 %)
    assert abs(frac_random - 0.1) < 0.01
    _, protected = mask_tokens(ids, SPECIAL, 0.5, protect_sep=True, generator=g)
    assert (protected[:, 20] == -100).all()


def test_mlm_loss_is_cross_entropy_of_the_tied_head_on_the_masked_places():
    bert = _bert()
    assert bert.cls.predictions.decoder.weight is bert.embeddings.word_embeddings.weight
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(5, 60, (3, 7), generator=g)
    ids[:, 0] = SPECIAL.cls
    att = torch.ones_like(ids)
    vis = torch.randn(3, 5, 12, generator=g)
    got = mlm_loss(bert, ids, att, vis, SPECIAL, 0.5, generator=torch.Generator().manual_seed(2))
    corrupt, labels = mask_tokens(ids, SPECIAL, 0.5, generator=torch.Generator().manual_seed(2))
    text = bert(corrupt, att, mode="text")
    logits = bert.mlm_logits(bert(attention_mask=att, mode="fusion", encoder_embeds=text, encoder_hidden_states=vis))
    keep = labels != -100
    want = F.cross_entropy(logits[keep], labels[keep])
    assert math.isclose(float(got.detach()), float(want.detach()), rel_tol=1e-5)


def test_uta_values():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(1, 2, 5, 8, generator=g)
    assert float(uta_loss(3 * t, t)) == pytest.approx(0.0, abs=1e-6)  # normalised first
    e0, e1 = torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4)
    e0[..., 0], e1[..., 1] = 2.0, 5.0
    assert float(uta_loss(e0, e1)) == pytest.approx(2.0)  # orthogonal: 2 - 2cos = 2
    assert float(uta_loss(e0, e1, loss_type="mse")) == pytest.approx(0.5)  # |(1,-1,0,0)|^2 / 4
    assert float(uta_loss(e0, e1, norm_type="none", loss_type="mse")) == pytest.approx((4 + 25) / 4)
    with pytest.raises(ValueError, match="shape"):
        uta_loss(t, t[:, :, :3])


def test_bert_gradient_checkpointing_gives_the_same_gradients():
    bert = _bert().train()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, 60, (2, 6), generator=g)
    vis = torch.randn(2, 5, 12, generator=g)

    def grads(ckpt):
        bert.zero_grad()
        bert.gradient_checkpointing = ckpt
        torch.manual_seed(0)  # dropout draws the same masks (recomputation replays them)
        text = bert(ids, torch.ones_like(ids), mode="text")
        out = bert(attention_mask=torch.ones_like(ids), mode="fusion", encoder_embeds=text, encoder_hidden_states=vis)
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in bert.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], msg=n)
