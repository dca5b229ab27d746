"""Latent Relation Discovery (LRD; Yang et al., SIGIR 2024, §3.2 and Eq. 14), backbone-agnostic.

A relation extractor reads the frozen language features of a (history item, target) pair and
predicts a distribution q over all relations (Eq. 3–4); DistMult on the backbone's ID embeddings
must then reconstruct the pair under the predicted relations against a sampled negative (Eq. 6–7).
The backbone gets K extra relation types whose embeddings this task shapes.

Any relation-aware model can use it if it exposes ``entity_embeddings``, ``relation_embeddings``
and ``relation_num`` and lets a subclass add relation types (see ``RCF.extra_relation_num``):

    class MyModel_LRD(LRDModel, MyModel):
        ...  # see models/sequential/KDA_LRD.py

Loss forms (``--lrd_loss``):
- ``code`` (default): the authors' implementation: φ_r uses q_r·r plus the linear terms
  ⟨v_i, q_r·r⟩ + ⟨v_j, q_r·r⟩, one BPR pair σ(φ_r(i, j) − φ_r(i⁻, j)) per relation, averaged over valid
  positions inside the log, then −log averaged over relations and batch.
- ``paper``: Eq. 14 as written, averaged over valid (history, target) pairs:
  −Σ_r q_r [log σ(φ_r(i, j)) + log σ(−φ_r(i⁻, j))].
Why the default: with the paper's form every relation embedding receives the same gradient direction,
scaled by its q_r; with the paper's entropy bonus q stays uniform, so the relations stay collinear.
Measured on Office after 2 epochs (λ = 1, K = 8): mean off-diagonal cosine of relations 1..12 was
0.999 (paper form, paper entropy), 0.923 (paper form, code entropy), 0.725 (code form, code entropy).
Entropy (``--entropy_sign``): ``paper`` subtracts α·H[q] from the minimised loss (keeps q spread, as
the paper intends); ``code`` adds it (sharpens q, as the authors' code does). With ``--lrd_loss code``
the entropy has the code's scale (−q log q averaged over relations, i.e. H/R). Padded history positions
never contribute (the authors' code averages the entropy over padding too; we treat that as a defect).
``--leave_one_latent 1`` drops relation 0 (the virtual sequence relation) from reconstruction, as the code.
``--q_balance β`` subtracts β·H[q̄], q̄ = q averaged over the batch's valid pairs (same scale as the entropy
term): sharp q per pair, but different relations for different pairs (the mutual-information objective of
discrete clustering). Without it, even q restricted to the latent relations put 0.999 of its mass on one
latent relation for every pair after 2 Office epochs.
``--relation_diversity μ`` adds μ times the mean squared cosine between the embeddings of the reconstructed
relations (off-diagonal pairs). Why: with q spread by ``--q_balance``, six of eight latent relation embeddings
still ended with cosine .95–1.00: relations fed similar pairs get the same gradient direction. Pushed apart,
different relations score different pairs best, and q (trained to reconstruct) can route pairs between them.
``--q_attention 1`` adds log q(k | i, j) to the backbone's attention logits of each latent relation k, so that
history item i weighs, under k, as much as the extractor believes the pair (i, candidate j) is k-related. Why: in
the paper and the code q never reaches the ranking; the language features act only through the reconstruction
gradient on the relation embeddings, and the extractor never hears from the recommendation loss.
``--lrd_relations latent`` restricts q, the reconstruction and the entropy to the K latent relations. Why:
with q over every relation, a trained default KDA_LRD on Office put 0.99999994 of q on the predefined
``category`` relation for every observed pair, so the latent relations got no reconstruction gradient
(docs/lrd.md).
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.BaseModel import batched
from utils.sampling import sample_excluding
from utils.text_fusion import TextFusion
from utils.text_init import text_item_embeddings

if TYPE_CHECKING:
    from helpers.BaseRunner import BaseRunner
    from models.BaseModel import BaseModel

LRD_LOG_ARGS = ['latent_relation_num', 'lamda', 'alpha', 'lrd_loss', 'entropy_sign', 'leave_one_latent',
                'lrd_relations', 'q_balance', 'relation_diversity', 'q_attention', 'text_fusion', 'text_init',
                'lrd_feature', 'include_lrd', 'include_kge', 'plm_name']


class LatentRelationDiscovery(nn.Module):
    @staticmethod
    def parse_lrd_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--latent_relation_num', type=int, default=8,
                            help='K, the number of latent relation types (paper grid 5..10).')
        parser.add_argument('--lamda', type=float, default=0.1,
                            help='Weight λ of the LRD loss in the joint objective (Eq. 16). 0.1 beat 1 on dev '
                                 'NDCG@5 on 3 of 3 Office seeds (docs/results.md); the authors used 10.')
        parser.add_argument('--alpha', type=float, default=0.1,
                            help='Weight α of the entropy term of q.')
        parser.add_argument('--lrd_loss', type=str, default='code', choices=['paper', 'code'],
                            help="Reconstruction loss form: the authors' code (default: the paper's Eq. 14 "
                                 "makes all relation embeddings collinear, docs/lrd.md) or the paper's.")
        parser.add_argument('--entropy_sign', type=str, default='code', choices=['paper', 'code'],
                            help="code: minimise H[q] (sharpen q, the default); paper: maximise it (spread q, "
                                 "which keeps q uniform and the latent relations identical).")
        parser.add_argument('--leave_one_latent', type=int, default=1,
                            help='Drop relation 0 (virtual sequence relation) from reconstruction.')
        parser.add_argument('--lrd_relations', type=str, default='all', choices=['all', 'latent'],
                            help='Relations q ranges over: all (the paper and the code) or only the K latent ones '
                                 '(with all, a trained Office model put all of q on the predefined category '
                                 'relation, so the latent relations were never reconstructed; docs/lrd.md).')
        parser.add_argument('--q_balance', type=float, default=0.0,
                            help='Weight β of a bonus on the entropy of q averaged over the batch\'s pairs: with '
                                 'the sharpening entropy (β = α) the pair and its relation share maximal mutual '
                                 'information; without it q collapsed onto one relation for every pair (docs/lrd.md).')
        parser.add_argument('--relation_diversity', type=float, default=0.0,
                            help='Weight μ of the mean squared cosine between reconstructed relation embeddings: '
                                 'keeps the relations apart (with q spread, six of eight latent relations still '
                                 'ended collinear; docs/lrd.md). 0 = the paper and the code.')
        parser.add_argument('--q_attention', type=int, default=0,
                            help='1: add log q(k | history item, candidate) to the attention logits of each latent '
                                 'relation k, so the language features reach the ranking and the recommendation '
                                 'loss trains the extractor; 0 = the paper and the code (q shapes relation '
                                 'embeddings only).')
        return parser

    def __init__(self, args: argparse.Namespace, corpus, backbone: nn.Module):
        super().__init__()
        self.backbone = [backbone]  # a plain list: not a sub-module, so parameters are not registered twice
        self.lamda, self.alpha = args.lamda, args.alpha
        self.latent_start = backbone.relation_num - args.latent_relation_num  # latent relations come last
        self.q_balance, self.relation_diversity = args.q_balance, args.relation_diversity
        self.q_attention = bool(args.q_attention)
        self.loss_form, self.entropy_sign = args.lrd_loss, args.entropy_sign
        if args.lrd_relations == 'latent':
            self.first_relation = self.latent_start
        else:
            self.first_relation = 1 if args.leave_one_latent else 0
        self.mask_unreconstructed = args.lrd_relations == 'latent' or args.lrd_loss == 'paper'
        self.use_llm = args.lrd_feature == 'llm'
        d = backbone.emb_size
        if self.use_llm:
            self.register_buffer('features', torch.from_numpy(np.asarray(corpus.item_features, dtype=np.float32)),
                                 persistent=False)
            self.projection = nn.Linear(self.features.shape[1], d)  # Eq. 3
        self.extractor = nn.Linear(2 * d, backbone.relation_num)  # Eq. 4
        for module in self.children():
            backbone.reset_weights(module)
        self.reset_statistics()

    def reset_statistics(self) -> None:
        """Zero the running sums behind ``summary``: q's mass per relation, its largest entry, the pairs."""
        self.q_stats: torch.Tensor | None = None

    def _record(self, q: torch.Tensor, valid: torch.Tensor) -> None:
        """Accumulate on q's device, so that the GPU never waits for the CPU inside an epoch."""
        with torch.no_grad():
            q = q.float()
            stats = torch.cat([(q * valid[..., None]).flatten(0, -2).sum(0),
                               (q.max(-1).values * valid).sum()[None], valid.sum()[None]]).double()
            self.q_stats = stats if self.q_stats is None else self.q_stats + stats

    def summary(self) -> str:
        """Where q put its mass over the training pairs since the last reset: a collapse onto one relation
        (docs/lrd.md) shows as a mean largest entry near 1 and one relation with all the mass."""
        if self.q_stats is None or not float(self.q_stats[-1]):
            return ''
        stats = self.q_stats.cpu()
        pairs = float(stats[-1])
        share = stats[:-2] / pairs
        latent = share[self.latent_start:].sum()
        top = torch.argsort(share, descending=True)[:3].tolist()
        with torch.no_grad():
            overlap = float(self.relation_overlap(self.backbone[0].relation_embeddings.weight[self.latent_start:],
                                                  squared=False))
        return (f'LRD q over {int(pairs):,} pairs: mean max {float(stats[-2]) / pairs:.3f}, '
                f'latent share {float(latent):.3f}, top relations '
                + ', '.join(f'{r}:{float(share[r]):.3f}' for r in top)
                + f'; latent relation cosine mean {overlap:.3f}')

    def item_representation(self, items: torch.Tensor) -> torch.Tensor:
        """e_i: projected language features (Eq. 3), or the ID embedding for the w/o-LLM ablation.

        Each distinct item is projected once: a training batch looks up 5,376 items of which ~900 are
        distinct on Office, and the projection from the 384-wide features was the LRD part's largest cost.
        """
        if self.use_llm:
            distinct, inverse = torch.unique(items, return_inverse=True)
            return self.projection(self.features[distinct])[inverse]
        return self.backbone[0].entity_embeddings(items)

    def relation_distribution(self, items_i: torch.Tensor, items_j: torch.Tensor) -> torch.Tensor:
        """q(r | i, j) over the relations (Eq. 4); broadcasts over leading dims: ... × R.

        In the paper form, relations left out of reconstruction (relation 0 with ``--leave_one_latent 1``)
        get q = 0: otherwise that loss, a q-weighted sum of non-negative terms, is minimised by moving all
        of q onto the one relation it never scores, and the latent relations learn nothing. The code form
        keeps the authors' softmax over all relations (it has no such escape: q_r → 0 costs −log ½), unless
        ``--lrd_relations latent`` gives q = 0 to every predefined relation.
        """
        return self.relation_log_distribution(items_i, items_j).exp()

    def relation_log_distribution(self, items_i: torch.Tensor, items_j: torch.Tensor) -> torch.Tensor:
        """log q, computed as W_i e_i + W_j e_j + b (the linear layer over [e_i; e_j] split in two), so that
        all (history, candidate) pairs broadcast without materialising the concatenated pair features."""
        w_i, w_j = self.extractor.weight.split(self.extractor.in_features // 2, dim=1)
        logits = (F.linear(self.item_representation(items_i), w_i)
                  + F.linear(self.item_representation(items_j), w_j, self.extractor.bias))
        if self.first_relation and self.mask_unreconstructed:
            logits = torch.cat([torch.full_like(logits[..., :self.first_relation], -torch.inf),
                                logits[..., self.first_relation:]], dim=-1)
        return logits.log_softmax(dim=-1)

    def forward(self, feed_dict: dict) -> torch.Tensor:
        """L_lrd for a training batch: all (history item, target) pairs, one negative per history slot."""
        backbone = self.backbone[0]
        history = feed_dict['history_items']  # B × H
        negatives = feed_dict['lrd_neg_items'][:, :history.shape[1]]  # B × H
        target = feed_dict['item_id'][:, :1]  # B × 1
        valid = (history > 0).float()
        q = self.relation_distribution(history, target)  # B × H × R
        self._record(q, valid)
        q_rec = q[..., self.first_relation:]
        r = backbone.relation_embeddings.weight[self.first_relation:]  # R' × d
        v_i, v_n = backbone.entity_embeddings(history), backbone.entity_embeddings(negatives)
        v_j = backbone.entity_embeddings(target)  # B × 1 × d
        if self.loss_form == 'paper':
            pos = (v_i * v_j) @ r.T  # φ_r(i, j): B × H × R'
            neg = (v_n * v_j) @ r.T
            nll = -(q_rec * (F.logsigmoid(pos) + F.logsigmoid(-neg))).sum(-1)  # B × H
            recon = (nll * valid).sum() / valid.sum().clamp(min=1)
        else:
            pos = q_rec * ((v_i * v_j + v_i + v_j) @ r.T)
            neg = q_rec * ((v_n * v_j + v_n + v_j) @ r.T)
            likelihood = (torch.sigmoid(pos - neg) * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
            recon = -torch.log(likelihood.clamp(min=1e-12)).mean()
        q_range = q_rec if self.mask_unreconstructed else q  # the relations q ranges over
        pairs = valid.sum().clamp(min=1)
        entropy = (self._entropy(q_range) * valid).sum() / pairs
        sign = -1.0 if self.entropy_sign == 'paper' else 1.0
        loss = recon + sign * self.alpha * entropy
        if self.q_balance:
            marginal = (q_range * valid[..., None]).flatten(0, -2).sum(0) / pairs  # q averaged over the pairs
            loss = loss - self.q_balance * self._entropy(marginal)
        if self.relation_diversity:
            loss = loss + self.relation_diversity * self.relation_overlap(r)
        return loss

    @staticmethod
    def relation_overlap(relations: torch.Tensor, squared: bool = True) -> torch.Tensor:
        """Mean (squared) cosine similarity over the off-diagonal pairs of relation embeddings; 0 for one."""
        n = relations.shape[0]
        if n < 2:
            return relations.new_zeros(())
        unit = F.normalize(relations, dim=-1)
        cosine = (unit @ unit.T)[~torch.eye(n, dtype=torch.bool, device=relations.device)]
        return (cosine.square() if squared else cosine).mean()

    def _entropy(self, q: torch.Tensor) -> torch.Tensor:
        """H[q] over the last dim; in the code form on the code's scale, −q log q averaged over relations."""
        terms = -(q * torch.log(q.clamp(min=1e-12)))
        return terms.sum(-1) if self.loss_form == 'paper' else terms.mean(-1)


class LRDDataset:
    """Dataset mixin: one negative item per history position for the reconstruction task, drawn per
    epoch from items the user never clicked, with its own RNG so the backbone's sampling is unchanged."""

    def _prepare(self) -> None:
        super()._prepare()
        self.lrd_train = self.phase == 'train' and self.model.lrd is not None
        self.lrd_rng = np.random.default_rng(self.model.random_seed + 7)

    def actions_before_epoch(self) -> None:
        super().actions_before_epoch()
        if self.lrd_train:
            width = max(self.model.history_max, 1) if self.model.history_max > 0 else int(self.data['position'].max())
            self.lrd_neg_items = sample_excluding(self.data['user_id'], width, 1, self.corpus.n_items,
                                                  self.corpus.train_clicked_keys, self.corpus.n_items,
                                                  self.lrd_rng).astype(np.int32)

    @batched
    def _get_feed_dict(self, index):
        feed_dict = super()._get_feed_dict(index)
        if self.lrd_train:
            feed_dict['lrd_neg_items'] = self.lrd_neg_items[index].astype(np.int64)
        return feed_dict


class LRDModel:
    """Model mixin that composes a relation-aware backbone with LRD: ``class KDA_LRD(LRDModel, KDA)``.

    Adds K latent relation types to the backbone, attaches the module as ``self.lrd`` (None with
    ``--include_lrd 0``, which leaves exactly the backbone) and adds λ·L_lrd to the training loss. With
    ``--text_fusion 1`` evaluation scores are fused with the language features' history–candidate similarity,
    with a weight fitted on dev after training (utils/text_fusion.py), with or without LRD. ``--text_init 1``
    starts the item ID embeddings from the features (utils/text_init.py).
    """
    reader = 'LRDReader'

    def __init__(self, args: argparse.Namespace, corpus):
        super().__init__(args, corpus)
        self.lrd = LatentRelationDiscovery(args, corpus, self) if args.include_lrd else None
        if args.text_fusion and args.test_all:
            raise ValueError('--text_fusion standardises scores over sampled candidates; it does not support '
                             '--test_all 1')
        self.text_fusion = TextFusion(corpus.item_features) if args.text_fusion else None
        if args.text_init:
            items = text_item_embeddings(corpus.item_features, self.emb_size)
            with torch.no_grad():
                self.entity_embeddings.weight[1:corpus.n_items] = torch.from_numpy(items)

    def extra_relation_num(self, args: argparse.Namespace) -> int:
        return args.latent_relation_num if args.include_lrd else 0

    def forward(self, feed_dict: dict) -> dict:
        out_dict = super().forward(feed_dict)
        if self.text_fusion is not None and feed_dict['phase'] != 'train':
            out_dict['prediction'] = self.text_fusion(out_dict['prediction'], feed_dict['history_items'],
                                                      feed_dict['item_id'])
        if self.lrd is not None and feed_dict['phase'] == 'train':
            out_dict['lrd_loss'] = self.lrd(feed_dict)
        return out_dict

    def relational_logits(self, feed_dict: dict) -> torch.Tensor:
        """With ``--q_attention 1``, latent relation k's logits gain log q(k | history item, candidate)."""
        logits = super().relational_logits(feed_dict)
        if self.lrd is None or not self.lrd.q_attention:
            return logits
        start = self.lrd.latent_start
        log_q = self.lrd.relation_log_distribution(feed_dict['history_items'][:, None, :],
                                                   feed_dict['item_id'][:, :, None])  # B × C × H × R
        return torch.cat([logits[..., :start], logits[..., start:] + log_q[..., start:]], dim=-1)

    def loss(self, out_dict: dict) -> torch.Tensor:
        loss = super().loss(out_dict)
        return loss + self.lrd.lamda * out_dict['lrd_loss'] if 'lrd_loss' in out_dict else loss

    def calibrate(self, runner: BaseRunner, dev: BaseModel.Dataset) -> bool:
        if self.text_fusion is None:
            return super().calibrate(runner, dev)
        self.text_fusion.calibrate(runner, dev)
        return True

    def epoch_summary(self) -> str:
        backbone = super().epoch_summary()
        if self.lrd is None:
            return backbone
        summary = self.lrd.summary()
        self.lrd.reset_statistics()
        return '\n'.join(line for line in (summary, backbone) if line)
