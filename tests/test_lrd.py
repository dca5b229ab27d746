"""Latent Relation Discovery (utils/lrd.py) on RCF and KDA: q, both loss forms checked by hand, padding,
the ablation flags, bit-identity with the plain backbone under --include_lrd 0, and one-epoch runs."""
from __future__ import annotations

import argparse
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'src'))

import main  # noqa: E402
from helpers import LRDReader as lrd_reader_module  # noqa: E402
from helpers.BaseRunner import BaseRunner  # noqa: E402
from helpers.KDAReader import KDAReader  # noqa: E402
from helpers.KGReader import KGReader  # noqa: E402
from helpers.LRDReader import LRDReader  # noqa: E402
from models.sequential.KDA import KDA  # noqa: E402
from models.sequential.KDA_LRD import KDA_LRD  # noqa: E402
from models.sequential.RCF import RCF  # noqa: E402
from models.sequential.RCF_LRD import RCF_LRD  # noqa: E402
from tiny_data import make_tiny_dataset  # noqa: E402
from utils import corpus_cache, text_encoders  # noqa: E402
from utils.runtime import init_seed  # noqa: E402

FEAT_DIM = 6
N_ITEMS = 30
MODELS = {'RCF': RCF, 'KDA': KDA, 'RCF_LRD': RCF_LRD, 'KDA_LRD': KDA_LRD}
READERS = {'RCF': KGReader, 'KDA': KDAReader, 'RCF_LRD': LRDReader, 'KDA_LRD': LRDReader}


@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory) -> Path:
    """Tiny data plus ``Tiny.feat.test``: a deterministic text-format feature file (one row per item 1..n)."""
    root = tmp_path_factory.mktemp('data')
    folder = make_tiny_dataset(root, n_users=12, n_items=N_ITEMS, n_neg=8)
    items = np.arange(1, N_ITEMS + 1)[:, None]
    features = np.concatenate([np.sin(items * np.arange(1, FEAT_DIM)), items % 3], axis=1)
    np.savetxt(folder / 'Tiny.feat.test', features, fmt='%.6f')
    return root


@pytest.fixture(autouse=True)
def cache_in_tmp(monkeypatch, tmp_path):
    monkeypatch.setattr(corpus_cache, 'REPO_DIR', tmp_path)


def parse(model: str, root: Path, *extra: str) -> argparse.Namespace:
    lrd_args = ['--plm_name', 'feat:test', '--latent_relation_num', '3'] if model.endswith('_LRD') else []
    argv = ['--model_name', model, '--path', str(root), '--dataset', 'Tiny', '--gpu', '', *lrd_args,
            '--emb_size', '8', '--history_max', '6', '--include_attr', '1', '--num_heads', '2', *extra]
    parser, *_ = main.build_parser(argv)
    return parser.parse_args(argv)


def build(model: str, root: Path, *extra: str, phase: str = 'train', seed: int = 0):
    args = parse(model, root, *extra)
    corpus = READERS[model](args)
    torch.manual_seed(seed)
    net = MODELS[model](args, corpus)
    data = MODELS[model].Dataset(net, corpus, phase)
    data.prepare()
    data.actions_before_epoch()
    return net, data


def padded_train_batch(data, n: int = 40) -> dict:
    batch = data[np.arange(min(n, len(data)))]
    assert (batch['history_items'] == 0).any()  # padding present
    return batch


# --------------------------------------------------------------------------- structure and q

@pytest.mark.parametrize('model', ['RCF_LRD', 'KDA_LRD'])
def test_latent_relations_extend_the_backbone_and_q_sums_to_one(model, tiny_root):
    net, data = build(model, tiny_root)
    corpus = data.corpus
    assert corpus.item_features.shape == (N_ITEMS + 1, FEAT_DIM) and not corpus.item_features[0].any()
    assert net.relation_num == corpus.n_relations + 3 == 8
    assert net.relation_embeddings.weight.shape == (8, 8)
    assert net.lrd.projection.in_features == FEAT_DIM and net.lrd.extractor.out_features == 8
    batch = padded_train_batch(data)
    assert batch['item_val'].shape[-1] == 8 and not batch['item_val'][..., 5:].any()  # latent: value 0
    q = net.lrd.relation_distribution(batch['history_items'], batch['item_id'][:, :1])
    assert q.shape == (*batch['history_items'].shape, 8)
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(batch['history_items'].shape))
    with torch.no_grad():
        attention = net.relational_attention(batch)
    assert attention.shape[-1] == 8  # latent relations take part in the relation-wise attention


def test_q_is_the_extractor_softmax_over_concatenated_pair_features(tiny_root):
    """Eq. 4 by hand: softmax(W [e_i; e_j] + b); the code splits W to broadcast over all pairs."""
    net, _ = build('KDA_LRD', tiny_root)
    history, target = torch.tensor([[1, 2, 0, 5]]), torch.tensor([[7]])
    with torch.no_grad():
        e_i = net.lrd.projection(net.lrd.features[history])  # 1 × 4 × d
        e_j = net.lrd.projection(net.lrd.features[target]).expand_as(e_i)
        expected = net.lrd.extractor(torch.cat([e_i, e_j], dim=-1)).softmax(-1)
        torch.testing.assert_close(net.lrd.relation_distribution(history, target), expected)


@pytest.mark.parametrize('model', ['RCF_LRD', 'KDA_LRD'])
def test_q_attention_weighs_latent_relations_by_q(model, tiny_root):
    """--q_attention 1: softmax over history of (DistMult logit + log q) for latent relations only."""
    net, data = build(model, tiny_root, '--q_attention', '1', '--lrd_relations', 'latent')
    batch = padded_train_batch(data, 6)
    start = net.lrd.latent_start
    with torch.no_grad():
        attention = net.relational_attention(batch)  # B × C × H × R
        net.lrd.q_attention = False
        plain_logits = net.relational_logits(batch)
        plain = net.relational_attention(batch)
        net.lrd.q_attention = True
        history, items = batch['history_items'], batch['item_id']
        q = torch.stack([net.lrd.relation_distribution(history, items[:, c:c + 1])
                         for c in range(items.shape[1])], dim=1)  # B × C × H × R, one candidate at a time
    valid = (history > 0)[:, None, :]
    torch.testing.assert_close(attention[..., :start], plain[..., :start])  # predefined relations unchanged
    weighted = torch.exp(plain_logits[..., start:]) * q[..., start:] * valid[..., None]
    torch.testing.assert_close(attention[..., start:], weighted / weighted.sum(2, keepdim=True))
    assert not torch.allclose(attention[..., start:], plain[..., start:])
    assert (attention.masked_select(~valid[..., None].expand_as(attention)) == 0).all()  # padding ignored


@pytest.mark.parametrize('q_attention', ['0', '1'])
def test_q_attention_lets_the_recommendation_loss_train_the_extractor(q_attention, tiny_root):
    net, data = build('KDA_LRD', tiny_root, '--q_attention', q_attention, '--lamda', '0')
    batch = padded_train_batch(data)
    out = net(batch)
    net.loss({'prediction': out['prediction']}).backward()  # the recommendation loss alone
    grad = net.lrd.extractor.weight.grad
    assert (grad is not None and bool(grad.abs().sum() > 0)) == (q_attention == '1')


@pytest.mark.parametrize('leave', ['1', '0'])
def test_relations_left_out_of_reconstruction_get_no_q(leave, tiny_root):
    """With relation 0 left out, q cannot escape the loss by moving its mass there."""
    net, _ = build('KDA_LRD', tiny_root, '--leave_one_latent', leave, '--lrd_loss', 'paper')
    with torch.no_grad():
        q = net.lrd.relation_distribution(torch.tensor([[1, 2, 3]]), torch.tensor([[4]]))
    assert torch.allclose(q.sum(-1), torch.ones(1, 3))
    assert bool((q[..., 0] == 0).all()) == (leave == '1')
    code, _ = build('KDA_LRD', tiny_root, '--leave_one_latent', leave, '--lrd_loss', 'code')
    with torch.no_grad():  # the authors' form keeps their softmax over every relation
        assert bool((code.lrd.relation_distribution(torch.tensor([[1]]), torch.tensor([[4]]))[..., 0] > 0).all())


def test_lrd_negatives_are_per_history_slot_and_never_training_clicks(tiny_root):
    net, data = build('KDA_LRD', tiny_root)
    assert data.lrd_neg_items.shape == (len(data), 6)
    train = pd.read_csv(tiny_root / 'Tiny' / 'train.csv', sep='\t').groupby('user_id')['item_id'].apply(set)
    for u, negs in zip(data.data['user_id'], data.lrd_neg_items):
        assert not set(negs.tolist()) & train[u]
    batch = data[np.arange(5)]
    np.testing.assert_array_equal(batch['lrd_neg_items'].numpy(), data.lrd_neg_items[:5])
    _, dev = build('KDA_LRD', tiny_root, phase='dev')
    assert 'lrd_neg_items' not in dev[np.arange(3)]


# --------------------------------------------------------------------------- the loss, by hand

def hand_lrd_loss(net, batch) -> float:
    """Eq. 14 in the selected form, one (b, h) pair and one relation at a time, in float64."""
    lrd = net.lrd
    history = batch['history_items'].numpy()
    negatives = batch['lrd_neg_items'].numpy()
    target = batch['item_id'][:, 0].numpy()
    with torch.no_grad():
        q_all = lrd.relation_distribution(batch['history_items'], batch['item_id'][:, :1]).double().numpy()
    ent = net.entity_embeddings.weight.detach().double().numpy()
    rel = net.relation_embeddings.weight.detach().double().numpy()
    first = lrd.first_relation
    log_sigmoid = lambda x: -np.logaddexp(0, -x)  # noqa: E731
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    nll, entropies, per_user_relation, q_pairs = [], [], [], []
    for b in range(len(history)):
        valid = [h for h in range(history.shape[1]) if history[b, h] > 0]
        v_j = ent[target[b]]
        likelihood = {r: [] for r in range(first, len(rel))}
        for h in valid:
            v_i, v_n, q = ent[history[b, h]], ent[negatives[b, h]], q_all[b, h]
            q_pairs.append(q[first:] if lrd.loss_form == 'paper' or lrd.mask_unreconstructed else q)
            if lrd.loss_form == 'paper':  # q is 0 on relations left out of reconstruction
                entropies.append(-(q[first:] * np.log(q[first:])).sum())
            elif lrd.mask_unreconstructed:  # the authors' scale over the latent relations only
                entropies.append(-(q[first:] * np.log(q[first:])).mean())
            else:  # the authors' scale: averaged over all relations
                entropies.append(-(q * np.log(q)).mean())
            pair = 0.0
            for r in range(first, len(rel)):
                pos, neg = (v_i * rel[r] * v_j).sum(), (v_n * rel[r] * v_j).sum()
                pair -= q[r] * (log_sigmoid(pos) + log_sigmoid(-neg))
                pos_code = q[r] * (pos + (v_i * rel[r]).sum() + (v_j * rel[r]).sum())
                neg_code = q[r] * (neg + (v_n * rel[r]).sum() + (v_j * rel[r]).sum())
                likelihood[r].append(sigmoid(pos_code - neg_code))
            nll.append(pair)
        per_user_relation.extend(-np.log(np.mean(v)) for v in likelihood.values())
    recon = np.mean(nll) if lrd.loss_form == 'paper' else np.mean(per_user_relation)
    sign = -1.0 if lrd.entropy_sign == 'paper' else 1.0
    q_bar = np.mean(q_pairs, axis=0)  # q averaged over the valid pairs
    marginal = -(q_bar * np.log(q_bar))
    marginal = marginal.sum() if lrd.loss_form == 'paper' else marginal.mean()
    unit = rel[first:] / np.linalg.norm(rel[first:], axis=1, keepdims=True)
    cosines = [(unit[k] @ unit[m]) ** 2 for k in range(len(unit)) for m in range(len(unit)) if k != m]
    diversity = lrd.relation_diversity * np.mean(cosines)
    return recon + sign * lrd.alpha * np.mean(entropies) - lrd.q_balance * marginal + diversity


@pytest.mark.parametrize('model', ['RCF_LRD', 'KDA_LRD'])
@pytest.mark.parametrize('form, sign, leave, relations, balance, diversity', [
    ('paper', 'paper', '1', 'all', '0', '0'), ('code', 'code', '1', 'all', '0', '0'),
    ('paper', 'code', '0', 'all', '0', '0'), ('code', 'paper', '0', 'all', '0', '0'),
    ('code', 'code', '1', 'latent', '0', '0'), ('paper', 'paper', '0', 'latent', '0', '0'),
    ('code', 'code', '1', 'latent', '0.7', '0'), ('paper', 'code', '1', 'all', '0.7', '0'),
    ('code', 'code', '1', 'all', '0.7', '0'), ('code', 'code', '1', 'latent', '0.7', '2'),
    ('paper', 'code', '1', 'all', '0', '2')])
def test_lrd_loss_matches_hand_computation(model, form, sign, leave, relations, balance, diversity, tiny_root):
    net, data = build(model, tiny_root, '--lrd_loss', form, '--entropy_sign', sign, '--leave_one_latent', leave,
                      '--alpha', '0.3', '--lrd_relations', relations, '--q_balance', balance,
                      '--relation_diversity', diversity)
    with torch.no_grad():  # larger embeddings than the init, so that every term matters
        net.entity_embeddings.weight.normal_(0, 0.7)
        net.relation_embeddings.weight.normal_(0, 0.7)
    batch = padded_train_batch(data, 12)
    first = net.relation_num - 3 if relations == 'latent' else int(leave)
    assert (net.lrd.loss_form, net.lrd.entropy_sign, net.lrd.first_relation) == (form, sign, first)
    with torch.no_grad():
        loss = net.lrd(batch)
    assert loss.shape == ()
    assert float(loss) == pytest.approx(hand_lrd_loss(net, batch), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize('model', ['RCF_LRD', 'KDA_LRD'])
@pytest.mark.parametrize('form', ['paper', 'code'])
def test_padded_positions_contribute_nothing(model, form, tiny_root):
    net, data = build(model, tiny_root, '--lrd_loss', form)
    batch = padded_train_batch(data)
    pad = batch['history_items'] == 0
    width = batch['history_items'].shape[1]
    with torch.no_grad():
        net.entity_embeddings.weight.normal_(0, 0.5)
        before = net.lrd(batch)
        changed = dict(batch)
        negatives = batch['lrd_neg_items'].clone()
        negatives[:, :width][pad] = torch.randint(1, N_ITEMS + 1, (int(pad.sum()),))
        negatives[:, width:] = 1
        changed['lrd_neg_items'] = negatives
        net.entity_embeddings.weight[0] = torch.randn(net.emb_size) * 3  # the padding item's embedding
        after = net.lrd(changed)
        assert float(after) == pytest.approx(float(before), abs=1e-6)
        # control: changing the negative of a valid position does change the loss
        valid_row, valid_col = [int(x[0]) for x in torch.nonzero(~pad, as_tuple=True)]
        negatives[valid_row, valid_col] = negatives[valid_row, valid_col] % N_ITEMS + 1
        assert float(net.lrd(changed)) != pytest.approx(float(before), abs=1e-6)


@pytest.mark.parametrize('form', ['paper', 'code'])
def test_entropy_sign_flips_the_entropy_term(form, tiny_root):
    net_p, data = build('KDA_LRD', tiny_root, '--lrd_loss', form, '--entropy_sign', 'paper')
    net_c, _ = build('KDA_LRD', tiny_root, '--lrd_loss', form, '--entropy_sign', 'code')
    for (name, a), b in zip(net_p.state_dict().items(), net_c.state_dict().values()):
        assert torch.equal(a, b), name  # same seed, same parameters
    with torch.no_grad():  # a sharper, position-dependent q than at initialisation
        net_p.lrd.extractor.weight.normal_(0, 2)
        net_p.lrd.projection.weight.normal_(0, 2)
    net_c.load_state_dict(net_p.state_dict())
    batch = padded_train_batch(data)
    with torch.no_grad():
        q = net_p.lrd.relation_distribution(batch['history_items'], batch['item_id'][:, :1])
        entropy = -torch.xlogy(q, q).sum(-1) if form == 'paper' else -torch.xlogy(q, q).mean(-1)
        valid = batch['history_items'] > 0
        h_valid = entropy[valid].mean()
        h_all = entropy.mean()
        difference = net_c.lrd(batch) - net_p.lrd(batch)
    # code minus paper = 2 α H, H averaged over valid positions only (padding is not part of the entropy)
    assert float(difference) == pytest.approx(2 * 0.1 * float(h_valid), rel=1e-4)
    assert abs(float(h_valid) - float(h_all)) > 0.01 * float(h_valid)  # so the next line tells the two apart
    assert float(difference) != pytest.approx(2 * 0.1 * float(h_all), rel=1e-3)


def test_joint_loss_adds_lambda_times_lrd(tiny_root):
    net, data = build('KDA_LRD', tiny_root, '--lamda', '5')
    batch = padded_train_batch(data)
    net.train()
    out = net(batch)
    assert {'prediction', 'kg_prediction', 'lrd_loss'} == set(out)
    torch.testing.assert_close(net.loss(out), KDA.loss(net, out) + 5 * out['lrd_loss'])
    net.eval()
    dev_net_out = net({**batch, 'phase': 'dev'})
    assert set(dev_net_out) == {'prediction'}


# --------------------------------------------------------------------------- ablations

def test_lrd_feature_id_reads_entity_embeddings(tiny_root):
    net_llm, data = build('RCF_LRD', tiny_root, '--lrd_feature', 'llm')
    net_id, _ = build('RCF_LRD', tiny_root, '--lrd_feature', 'id')
    batch = padded_train_batch(data)
    history, target = batch['history_items'], batch['item_id'][:, :1]
    assert not hasattr(net_id.lrd, 'projection') and not hasattr(net_id.lrd, 'features')
    assert all(not n.startswith('lrd.projection') for n, _ in net_id.named_parameters())
    assert net_id.lrd.extractor.in_features == 2 * net_id.emb_size
    # w/o LLM: q is a function of the ID embeddings; with LLM features it is not
    q_id = net_id.lrd.relation_distribution(history, target)
    grad_id, = torch.autograd.grad(q_id[..., 1].sum(), net_id.entity_embeddings.weight)
    assert grad_id[history[history > 0]].abs().sum() > 0
    q_llm = net_llm.lrd.relation_distribution(history, target)
    grad_llm, = torch.autograd.grad(q_llm[..., 1].sum(), net_llm.entity_embeddings.weight, allow_unused=True)
    assert grad_llm is None
    # and the language features reach the loss only in the LLM variant
    net_llm.lrd(batch).backward()
    assert net_llm.lrd.projection.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('model', ['RCF_LRD', 'KDA_LRD'])
def test_include_kge_0_drops_the_kg_task(model, tiny_root):
    net, data = build(model, tiny_root, '--include_kge', '0')
    assert net.gamma == 0
    batch = padded_train_batch(data)
    assert 'head_id' not in batch
    out = net(batch)
    assert set(out) == {'prediction', 'lrd_loss'}
    net_kge, data_kge = build(model, tiny_root)
    assert net_kge.gamma > 0 and 'kg_prediction' in net_kge(padded_train_batch(data_kge))


@pytest.mark.parametrize('leave, relation0_trained', [('1', False), ('0', True)])
def test_leave_one_latent(leave, relation0_trained, tiny_root):
    net, data = build('KDA_LRD', tiny_root, '--leave_one_latent', leave)
    batch = padded_train_batch(data)
    net.lrd(batch).backward()
    grad = net.relation_embeddings.weight.grad.abs().sum(1)
    assert bool(grad[0] > 0) is relation0_trained
    assert (grad[1:] > 0).all()  # every other relation, latent ones included, is reconstructed


@pytest.mark.parametrize('form', ['code', 'paper'])
def test_latent_only_q_reconstructs_only_latent_relations(form, tiny_root):
    """--lrd_relations latent: q lives on the K latent relations, and only they get LRD gradient."""
    net, data = build('KDA_LRD', tiny_root, '--lrd_relations', 'latent', '--lrd_loss', form)
    latent = net.relation_num - 3
    assert latent == data.corpus.n_relations
    with torch.no_grad():
        q = net.lrd.relation_distribution(torch.tensor([[1, 2, 3]]), torch.tensor([[4]]))
    assert torch.allclose(q.sum(-1), torch.ones(1, 3))
    assert (q[..., :latent] == 0).all() and (q[..., latent:] > 0).all()
    net.lrd(padded_train_batch(data)).backward()
    grad = net.relation_embeddings.weight.grad.abs().sum(1)
    assert (grad[:latent] == 0).all() and (grad[latent:] > 0).all()


def test_relation_overlap_by_hand():
    from utils.lrd import LatentRelationDiscovery
    relations = torch.tensor([[1., 0.], [0., 2.], [3., 3.]])  # cosines 0, 1/√2, 1/√2
    overlap = LatentRelationDiscovery.relation_overlap
    assert float(overlap(relations)) == pytest.approx(1 / 3)  # (0 + ½ + ½) / 3 squared
    assert float(overlap(relations, squared=False)) == pytest.approx(2 ** 0.5 / 3)
    assert float(overlap(relations[:1])) == 0.0


@pytest.mark.parametrize('diversity', ['0', '5'])
def test_relation_diversity_pushes_latent_relations_apart(diversity, tiny_root):
    """One gradient step from nearly collinear latent relations: apart with μ = 5, not without the term."""
    net, data = build('KDA_LRD', tiny_root, '--lrd_relations', 'latent', '--relation_diversity', diversity)
    weight = net.relation_embeddings.weight
    with torch.no_grad():
        weight[net.relation_num - 3:] = 1.0 + 0.1 * torch.randn(3, net.emb_size)
    before = net.lrd.relation_overlap(weight[net.relation_num - 3:]).item()
    net.lrd(padded_train_batch(data)).backward()
    with torch.no_grad():
        weight -= 2.0 * weight.grad
    drop = before - net.lrd.relation_overlap(weight[net.relation_num - 3:]).item()
    assert drop > 0.05 if diversity == '5' else abs(drop) < 0.01


def test_epoch_summary_reports_where_q_puts_its_mass(tiny_root):
    net, data = build('KDA_LRD', tiny_root)
    batch = padded_train_batch(data)
    assert net.epoch_summary() == ''  # nothing seen yet
    with torch.no_grad():
        net.lrd(batch)
        net.lrd(batch)  # sums accumulate over batches; the shares stay those of one batch
        q = net.lrd.relation_distribution(batch['history_items'], batch['item_id'][:, :1])
    valid = batch['history_items'] > 0
    pairs = q[valid]  # valid pairs × R
    share = pairs.mean(0)
    top = torch.argsort(share, descending=True)[:3].tolist()
    latent = float(share[net.relation_num - 3:].sum())
    latent_rel = net.relation_embeddings.weight[net.relation_num - 3:].detach().double().numpy()
    unit = latent_rel / np.linalg.norm(latent_rel, axis=1, keepdims=True)
    cosine = ((unit @ unit.T).sum() - 3) / 6  # mean over the 6 off-diagonal pairs of 3 latent relations
    expected = (f'LRD q over {2 * int(valid.sum()):,} pairs: mean max {float(pairs.max(-1).values.mean()):.3f}, '
                f'latent share {latent:.3f}, top relations ' + ', '.join(f'{r}:{float(share[r]):.3f}' for r in top)
                + f'; latent relation cosine mean {cosine:.3f}')
    assert net.epoch_summary() == expected
    assert net.epoch_summary() == ''  # reset after each report
    backbone, _ = build('KDA_LRD', tiny_root, '--include_lrd', '0')
    assert backbone.epoch_summary() == ''


# --------------------------------------------------------------------------- --text_fusion

def test_text_fusion_similarity_and_fused_scores_by_hand():
    from utils.text_fusion import TextFusion
    features = np.array([[0, 0], [1, 0], [0, 2], [3, 3], [-1, -1]], dtype=np.float32)  # row 0: padding
    fusion = TextFusion(features)
    history = torch.tensor([[1, 2, 0], [0, 0, 0]])  # second user: empty history
    candidates = torch.tensor([[3, 4], [1, 2]])
    r = 2 ** -0.5
    similarity = torch.tensor([[r, -r], [0.0, 0.0]])  # the padded slot (cosine 0) must not win for item 4
    torch.testing.assert_close(fusion.similarity(history, candidates), similarity)
    scores = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    torch.testing.assert_close(fusion(scores, history, candidates), scores)  # β = 0 until calibrated
    fusion.beta.fill_(0.5)
    # row 0: z(scores) = (-1, 1), z(similarity) = (1, -1); row 1: both constant, z = 0
    torch.testing.assert_close(fusion(scores, history, candidates), torch.tensor([[-0.5, 0.5], [0.0, 0.0]]))


@pytest.mark.parametrize('backbone', ['KDA', 'RCF'])
def test_text_fusion_trains_exactly_the_backbone(backbone, tiny_root):
    plain = train_trajectory(backbone + '_LRD', tiny_root, '--include_lrd', '0')
    fused = train_trajectory(backbone + '_LRD', tiny_root, '--include_lrd', '0', '--text_fusion', '1')
    assert plain[0] == fused[0]
    np.testing.assert_array_equal(plain[1], fused[1])  # β = 0 before calibration: the raw scores
    assert set(fused[2]) == set(plain[2]) | {'text_fusion.beta'}
    for name in plain[2]:
        assert torch.equal(plain[2][name], fused[2][name]), name


def test_text_fusion_calibrates_beta_on_dev_and_fuses_test(tiny_root):
    from utils.text_fusion import BETAS, fuse
    args = parse('KDA_LRD', tiny_root, '--include_lrd', '0', '--text_fusion', '1', '--eval_batch_size', '7')
    init_seed(0)
    corpus = LRDReader(args)
    net = KDA_LRD(args, corpus)
    data = {phase: KDA_LRD.Dataset(net, corpus, phase) for phase in ('train', 'dev', 'test')}
    for dataset in data.values():
        dataset.prepare()
    runner = BaseRunner(args)
    net.actions_before_train()
    runner.fit(data['train'], epoch=1)

    def raw_and_similarity(dataset):
        feed = dataset[np.arange(len(dataset))]
        with torch.no_grad():
            net.text_fusion.beta.zero_()
            return net(feed)['prediction'], net.text_fusion.similarity(feed['history_items'], feed['item_id'])

    dev_scores, dev_similarity = raw_and_similarity(data['dev'])
    expected = {b: ranking_metrics_of(fuse(dev_scores, dev_similarity, b))['NDCG@5'] for b in BETAS}
    assert net.calibrate(runner, data['dev']) is True
    beta = float(net.text_fusion.beta)
    assert expected[beta] == max(expected.values()) and all(b >= beta for b in BETAS if expected[b] == expected[beta])
    test_scores, test_similarity = raw_and_similarity(data['test'])
    net.text_fusion.beta.fill_(beta)
    assert runner.evaluate(data['test'], [5], ['NDCG', 'HR']) == ranking_metrics_of(
        fuse(test_scores, test_similarity, beta))


def test_text_fusion_loads_a_checkpoint_of_the_plain_backbone(tiny_root, tmp_path):
    plain, _ = build('KDA_LRD', tiny_root, '--include_lrd', '0', seed=1)
    plain.save_model(str(tmp_path / 'kda.pt'))
    fused, _ = build('KDA_LRD', tiny_root, '--include_lrd', '0', '--text_fusion', '1', seed=2)
    fused.text_fusion.beta.fill_(0.3)
    fused.load_model(str(tmp_path / 'kda.pt'))
    assert float(fused.text_fusion.beta) == 0.0
    for name, value in plain.state_dict().items():
        assert torch.equal(fused.state_dict()[name], value), name
    state = plain.state_dict()
    del state['item_bias.weight']
    with pytest.raises(RuntimeError, match='item_bias.weight'):  # other missing keys are still errors
        fused.load_state_dict(state)


def ranking_metrics_of(scores: torch.Tensor) -> dict:
    from utils.metrics import rank_of_truth, ranking_metrics
    return ranking_metrics(rank_of_truth(scores.numpy()), [5], ['NDCG', 'HR'])


def test_text_fusion_loads_features_without_lrd_and_refuses_full_ranking(tiny_root):
    _, data = build('KDA_LRD', tiny_root, '--include_lrd', '0')
    assert data.corpus.item_features is None
    net, data = build('KDA_LRD', tiny_root, '--include_lrd', '0', '--text_fusion', '1')
    assert data.corpus.item_features.shape == (N_ITEMS + 1, FEAT_DIM) and net.lrd is None
    with pytest.raises(ValueError, match='does not support --test_all 1'):
        build('KDA_LRD', tiny_root, '--text_fusion', '1', '--test_all', '1')
    plain, _ = build('KDA_LRD', tiny_root)
    assert plain.calibrate(None, None) is False  # nothing to fit without the option


# --------------------------------------------------------------------------- --text_init

def test_text_item_embeddings_keep_the_texts_geometry_at_the_init_scale():
    from utils.text_init import INIT_STD, text_item_embeddings
    rng = np.random.default_rng(0)
    x = np.vstack([np.zeros(5), rng.normal(size=(7, 2)) @ rng.normal(size=(2, 5))])  # rank 2, row 0 = padding
    out = text_item_embeddings(x, 4)
    assert out.shape == (7, 4) and out.dtype == np.float32
    assert out.std() == pytest.approx(INIT_STD, rel=1e-5)
    np.testing.assert_allclose(out[:, 2:], 0, atol=1e-7)  # only two informative components
    centred = x[1:] - x[1:].mean(axis=0)
    gram, expected = out @ out.T, centred @ centred.T
    np.testing.assert_allclose(gram, expected * (gram[0, 0] / expected[0, 0]), rtol=1e-4, atol=1e-9)
    assert text_item_embeddings(x, 1).shape == (7, 1)


@pytest.mark.parametrize('backbone', ['KDA', 'RCF'])
def test_text_init_sets_only_the_item_rows_and_then_trains_as_usual(backbone, tiny_root):
    from utils.text_init import text_item_embeddings
    plain, _ = build(backbone + '_LRD', tiny_root, '--include_lrd', '0')
    net, data = build(backbone + '_LRD', tiny_root, '--include_lrd', '0', '--text_init', '1')
    assert net.lrd is None and net.text_fusion is None
    weight, before = net.entity_embeddings.weight.detach(), plain.entity_embeddings.weight.detach()
    expected = text_item_embeddings(data.corpus.item_features, 8)
    np.testing.assert_allclose(weight[1:N_ITEMS + 1].numpy(), expected, rtol=1e-6)
    assert torch.equal(weight[0], before[0]) and torch.equal(weight[N_ITEMS + 1:], before[N_ITEMS + 1:])
    for name, value in plain.state_dict().items():  # everything else as the random initialisation
        if name != 'entity_embeddings.weight':
            assert torch.equal(value, net.state_dict()[name]), name
    losses, *_ = train_trajectory(backbone + '_LRD', tiny_root, '--include_lrd', '0', '--text_init', '1', epochs=1)
    assert np.isfinite(losses[0])


# --------------------------------------------------------------------------- --include_lrd 0 == backbone

def train_trajectory(model: str, root: Path, *extra: str, epochs: int = 2, model_cls: type | None = None):
    """Losses, dev predictions and final weights of ``model`` (or of ``model_cls`` built with its arguments)."""
    args = parse(model, root, '--batch_size', '16', '--eval_batch_size', '16', '--num_neg', '2', *extra)
    init_seed(args.random_seed)
    corpus = READERS[model](args)
    model_cls = model_cls or MODELS[model]
    net = model_cls(args, corpus)
    data = {}
    for phase in ('train', 'dev'):
        data[phase] = model_cls.Dataset(net, corpus, phase)
        data[phase].prepare()
    runner = BaseRunner(args)
    net.actions_before_train()
    losses = [runner.fit(data['train'], epoch=e + 1) for e in range(epochs)]
    predictions = np.concatenate([p for _, p in runner.predict_batches(data['dev'])])
    return losses, predictions, net.state_dict()


def assert_same_training(a, b) -> None:
    """Two train_trajectory results are bit-identical: losses per epoch, dev predictions, every weight."""
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert torch.equal(a[2][name], b[2][name]), name


@pytest.mark.parametrize('backbone', ['KDA', 'RCF'])
def test_include_lrd_0_is_bit_identical_to_the_backbone(backbone, tiny_root):
    plain = train_trajectory(backbone, tiny_root)
    ablated = train_trajectory(backbone + '_LRD', tiny_root, '--include_lrd', '0')
    assert_same_training(plain, ablated)
    with_lrd = train_trajectory(backbone + '_LRD', tiny_root, epochs=1)
    assert with_lrd[0][0] != plain[0][0]


def test_third_backbone_recipe_in_the_docs_trains_like_rcf_lrd(tiny_root, monkeypatch):
    """docs/lrd.md's recipe for adding LRD to another backbone, run verbatim with RCF standing in for it,
    trains exactly as RCF_LRD: the documented few lines are all a backbone needs."""
    text = (REPO / 'docs' / 'lrd.md').read_text()
    section = text[text.index('## Adding LRD to a third backbone'):]
    code = section.split('```python\n', 1)[1].split('```', 1)[0]
    stand_in = types.ModuleType('models.sequential.MyBackbone')
    stand_in.MyBackbone = type('MyBackbone', (RCF,), {})
    monkeypatch.setitem(sys.modules, 'models.sequential.MyBackbone', stand_in)
    namespace: dict = {}
    exec(compile(code, 'docs/lrd.md', 'exec'), namespace)
    composed = train_trajectory('RCF_LRD', tiny_root, epochs=1, model_cls=namespace['MyBackbone_LRD'])
    reference = train_trajectory('RCF_LRD', tiny_root, epochs=1)
    assert any(k.startswith('lrd.') for k in composed[2])
    assert_same_training(composed, reference)


# --------------------------------------------------------------------------- end to end

def run_main(model: str, root: Path, out: Path, *extra: str) -> dict:
    try:
        results = main.main(['--model_name', model, '--path', str(root), '--dataset', 'Tiny', '--epoch', '1',
                             '--gpu', '', '--batch_size', '16', '--eval_batch_size', '16', '--emb_size', '8',
                             '--latent_relation_num', '2', '--include_attr', '1', '--num_heads', '2',
                             '--log_file', str(out / 'log' / f'{model}.txt'),
                             '--model_path', str(out / 'model' / f'{model}.pt'), *extra])
    finally:  # main leaves its log file open on the root logger
        for handler in logging.root.handlers[:]:
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logging.root.removeHandler(handler)
    assert (out / 'model' / f'{model}.pt').is_file()
    assert len(list((out / 'log').glob('*/rec-test.csv'))) == 1
    for phase in ('dev', 'test'):
        for key in ('NDCG@5', 'HR@5', 'NDCG@10', 'HR@10'):
            assert 0 <= results[phase][key] <= 1, (phase, key)
    assert results['best_epoch'] == 1
    return results


@pytest.mark.parametrize('model, extra', [('RCF_LRD', ('--lrd_loss', 'code', '--entropy_sign', 'code')),
                                          ('KDA_LRD', ())])
def test_one_epoch_with_feature_file(model, extra, tiny_root, tmp_path):
    run_main(model, tiny_root, tmp_path, '--plm_name', 'feat:test', *extra)
    log = next((tmp_path / 'log').glob('*.txt')).read_text()
    assert f'Item text features from feat:test: ({N_ITEMS + 1}, {FEAT_DIM})' in log
    epoch_line = log.index('Epoch 1 ')
    q_line = log.index('LRD q over ', epoch_line)
    assert q_line > epoch_line  # the epoch's q summary follows its line
    if model == 'KDA_LRD':  # then the backbone's, on a line of its own
        assert log.index('\n            KDA temporal weight over ', q_line) > q_line


def test_main_calibrates_text_fusion_logs_it_and_saves_beta(tiny_root, tmp_path):
    results = run_main('KDA_LRD', tiny_root, tmp_path, '--plm_name', 'feat:test', '--text_fusion', '1')
    log = next((tmp_path / 'log').glob('*.txt')).read_text()
    line = next(line for line in log.splitlines() if 'Text fusion: beta ' in line)
    beta = float(line.split('Text fusion: beta ')[1].split()[0])
    state = torch.load(tmp_path / 'model' / 'KDA_LRD.pt', weights_only=True)
    assert float(state['text_fusion.beta']) == beta
    assert "with); grid 0.0:" in line and f"{beta}:{results['dev']['NDCG@5']:.4f}" in line  # dev is the fused one
    assert log.index('Text fusion: beta') < log.index('Dev After Training')


class WordCountEncoder:
    identity = 'test:wordcount-v1'

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen.extend(texts)
        vocabulary = ['red', 'blue', 'lamp', 'pen', 'desk', 'paper', 'ink', 'storage', 'Acme', 'Bolt']
        return np.array([[t.split().count(w) for w in vocabulary] + [len(t) / 10] for t in texts], dtype=float)


def test_one_epoch_with_a_test_encoder(tiny_root, tmp_path, monkeypatch):
    encoder = WordCountEncoder()
    calls = []

    def features(texts, encoder_name='minilm', cache_dir=None, device='cpu', batch_size=None, **kw):
        calls.append(cache_dir)
        return text_encoders.item_text_features(texts, encoder, cache_dir=cache_dir)

    monkeypatch.setattr(lrd_reader_module, 'item_text_features', features)
    run_main('KDA_LRD', tiny_root, tmp_path, '--plm_name', 'minilm', '--lrd_loss', 'code')
    assert len(encoder.seen) == N_ITEMS and all(' model ' in t for t in encoder.seen)
    assert calls == [corpus_cache.cache_dir(str(tiny_root / 'Tiny'), 'Tiny')]  # outside data: under <repo>/cache
    assert calls[0].startswith(str(tmp_path / 'cache' / 'Tiny-'))


def test_without_llm_no_text_is_encoded(tiny_root, monkeypatch):
    """The "w/o LLM" ablation never loads an encoder: its relation extractor reads ID embeddings."""
    def refuse(*args, **kwargs):
        raise AssertionError('item texts were encoded although --lrd_feature id')

    monkeypatch.setattr(lrd_reader_module, 'item_text_features', refuse)
    net, data = build('KDA_LRD', tiny_root, '--plm_name', 'minilm', '--lrd_feature', 'id')
    assert data.corpus.item_features is None and not hasattr(net.lrd, 'projection')
    assert torch.isfinite(net.lrd(padded_train_batch(data)))


def load_bench(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, REPO / 'bench' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_script_reports_q_per_epoch(tiny_root, capsys):
    """bench/probe_q.py: training-only epochs, each with the model's q summary."""
    rows = load_bench('probe_q').probe(['--probe_epochs', '2', '--model_name', 'KDA_LRD', '--path', str(tiny_root),
                          '--dataset', 'Tiny', '--gpu', '', '--plm_name', 'feat:test', '--latent_relation_num', '3',
                          '--emb_size', '8', '--history_max', '6', '--include_attr', '1', '--batch_size', '16',
                          '--lrd_relations', 'latent'])
    assert [r['epoch'] for r in rows] == [1, 2] and all(np.isfinite(r['loss']) for r in rows)
    assert all(r['summary'].startswith('LRD q over ') and 'latent share 1.000' in r['summary'] for r in rows)
    assert capsys.readouterr().out.count('"summary"') == 2


def test_text_fusion_probe_on_a_trained_model(tiny_root, tmp_path, capsys):
    """bench/probe_text_fusion.py: beta 0 reproduces main.py's own metrics, beta is picked on dev only."""
    results = run_main('KDA_LRD', tiny_root, tmp_path, '--plm_name', 'feat:test', '--include_lrd', '0')
    probe = load_bench('probe_text_fusion')
    argv = ['--model_name', 'KDA_LRD', '--path', str(tiny_root), '--dataset', 'Tiny', '--gpu', '', '--emb_size', '8',
            '--latent_relation_num', '2', '--include_attr', '1', '--num_heads', '2', '--plm_name', 'feat:test',
            '--include_lrd', '0', '--model_path', str(tmp_path / 'model' / 'KDA_LRD.pt')]
    rows = probe.probe(str(tiny_root / 'Tiny' / 'Tiny.feat.test'), argv)
    assert [r['signal'] for r in rows] == ['text', 'id_embedding']
    for row in rows:
        assert row['dev_NDCG@5_by_beta']['0.0'] == round(results['dev']['NDCG@5'], 4)
        assert row['model_test'] == {k: round(results['test'][k], 4) for k in row['model_test']}
        assert row['dev_NDCG@5_by_beta'][str(row['beta'])] == max(row['dev_NDCG@5_by_beta'].values())
        assert 0 <= row['alone_test']['HR@5'] <= row['alone_test']['HR@10'] <= 1
    assert capsys.readouterr().out.count('"signal"') == 2


def test_text_fusion_probe_run_summary_is_a_paired_t_test():
    from scipy import stats
    probe = load_bench('probe_text_fusion')
    plain, fused = [0.40, 0.42, 0.45], [0.43, 0.44, 0.49]
    by_run = {f'KDA-Office-s{s}': [{'signal': 'text', 'model_test': {'HR@5': a}, 'fused_test': {'HR@5': b}}]
              for s, (a, b) in enumerate(zip(plain, fused))}
    (row,) = probe.run_summary(by_run)
    expected = stats.ttest_rel(fused, plain)
    assert row['runs'] == 3 and row['t'] == round(expected.statistic, 3) and row['p'] == round(expected.pvalue, 5)
    assert row['plain'] == f'{np.mean(plain):.4f} ± {np.std(plain, ddof=1):.4f}'


def test_text_fusion_probe_takes_finished_runs_whose_checkpoint_exists(tmp_path):
    probe = load_bench('probe_text_fusion')
    kept = tmp_path / 'kept.pt'
    kept.write_bytes(b'')
    rows = [{'run_id': 'KDA-Office-s1-b', 'status': 'ok', 'model': 'KDA', 'dataset': 'Office', 'seed': 1,
             'argv': f"--model_name KDA --model_path '{kept}'"},
            {'run_id': 'KDA-Office-s0-a', 'status': 'ok', 'model': 'KDA', 'dataset': 'Office', 'seed': 0,
             'argv': f'--model_name KDA --model_path {tmp_path / "deleted.pt"}'},
            {'run_id': 'KDA-Office-s2-c', 'status': 'failed', 'model': 'KDA', 'dataset': 'Office', 'seed': 2,
             'argv': f'--model_name KDA --model_path {kept}'},
            {'run_id': 'RCF-Office-s0-d', 'status': 'ok', 'model': 'RCF', 'dataset': 'Office', 'seed': 0,
             'argv': f'--model_name RCF --model_path {kept}'}]
    pd.DataFrame(rows).to_csv(tmp_path / 'runs.csv', index=False)
    assert probe.runs_with_checkpoints([str(tmp_path / 'runs.csv')], 'KDA', 'Office') == [
        ('KDA-Office-s1-b', 1, ['--model_name', 'KDA', '--model_path', str(kept)])]
    with pytest.raises(ValueError, match='no finished KDA run on Electronics with its checkpoint on disk'):
        probe.runs_with_checkpoints([str(tmp_path / 'runs.csv')], 'KDA', 'Electronics')
