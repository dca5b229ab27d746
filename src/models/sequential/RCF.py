"""RCF: relation-aware attention over the history, one context per relation, mixed by self-attention.

Reference: Xin Xin et al., "Relational Collaborative Filtering: Modeling Multiple Item Relations for
Recommendation", SIGIR 2019; in the form of the LRD paper (Yang et al., SIGIR 2024, Eq. 9–12) and
the authors' code: KDA's architecture without its temporal decay.
Paper protocol: --emb_size 64 --include_attr 1 --include_val 1 --lr 1e-4 --l2 1e-6 --num_heads 4
--num_layers 5 --gamma -1 --history_max 20.

Interface used by LRD (``utils/lrd.py``) and the analyses, kept small on purpose:
``entity_embeddings`` (items, then attribute values), ``relation_embeddings`` (``relation_num`` rows:
the ``n_predefined_relations`` of the corpus, then any extra relation types a subclass adds through
``extra_relation_num``), and ``relational_attention(feed_dict)`` (the ω of Eq. 12 per relation).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn

from models.BaseModel import SequentialModel, batched
from utils import layers
from utils.sampling import contains


class RCF(SequentialModel):
    reader, runner = 'KGReader', 'BaseRunner'
    extra_log_args = ['emb_size', 'num_layers', 'num_heads', 'gamma', 'include_val']
    paper_args = ('--emb_size 64 --include_attr 1 --include_val 1 --lr 1e-4'
                  ' --l2 1e-6 --num_heads 4 --num_layers 5 --gamma -1 --history_max 20')

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--emb_size', type=int, default=64, help='Size of embedding vectors.')
        parser.add_argument('--neg_head_p', type=float, default=0.5,
                            help='The probability of sampling negative head entity.')
        parser.add_argument('--num_layers', type=int, default=1, help='Number of self-attention layers.')
        parser.add_argument('--num_heads', type=int, default=1, help='Number of attention heads.')
        parser.add_argument('--gamma', type=float, default=-1,
                            help='Coefficient of KG loss (-1: #triplets / #interactions).')
        parser.add_argument('--include_kge', type=int, default=1,
                            help='Whether to train the knowledge-graph embedding task (0 = "w/o KGE").')
        parser.add_argument('--attention_size', type=int, default=10, help='Size of attention hidden space.')
        parser.add_argument('--pooling', type=str, default='average',
                            help='Method of pooling relational history embeddings: average, max, attention')
        parser.add_argument('--include_val', type=int, default=1,
                            help='Whether include relation value in the relation representation')
        parser.add_argument('--init', type=str, default='normal', choices=['normal', 'xavier'],
                            help="normal: ReChorus' N(0, 0.01) for every weight (the reference); xavier: "
                                 'linear layers Xavier-uniform with zero bias, embeddings N(0, 0.01).')
        return SequentialModel.parse_model_args(parser)

    def __init__(self, args: argparse.Namespace, corpus):
        super().__init__(args, corpus)
        self.emb_size = args.emb_size
        self.neg_head_p = args.neg_head_p
        self.layer_num = args.num_layers
        self.head_num = args.num_heads
        self.attention_size = args.attention_size
        self.pooling = args.pooling.lower()
        if self.pooling not in ('average', 'max', 'attention'):
            raise ValueError(f'--pooling {args.pooling!r}: use average, max or attention')
        self.include_val = args.include_val
        self.entity_num = corpus.n_entities
        self.n_predefined_relations = corpus.n_relations
        self.relation_num = corpus.n_relations + self.extra_relation_num(args)
        n_triplets = len(corpus.relation_df)
        self.gamma = 0.0 if not args.include_kge or n_triplets == 0 else (
            n_triplets / corpus.n_clicks if args.gamma < 0 else args.gamma)
        self.init = args.init
        self._define_params()
        self.reset_weights(self)

    def reset_weights(self, module: nn.Module) -> None:
        """Initialise ``module`` as ``--init`` says (LRD initialises its own layers through this too).

        With N(0, 0.01) the five attention layers are products of tiny matrices: their gradients start near
        zero and training sits on a plateau whose length depends on the seed (docs/results.md).
        """
        module.apply(self.init_weights)
        if self.init == 'xavier':
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def extra_relation_num(self, args: argparse.Namespace) -> int:
        """Relation types beyond the corpus' predefined ones (LRD's latent relations)."""
        return 0

    def _define_params(self) -> None:
        self.user_embeddings = nn.Embedding(self.user_num, self.emb_size)
        self.entity_embeddings = nn.Embedding(self.entity_num, self.emb_size)
        self.relation_embeddings = nn.Embedding(self.relation_num, self.emb_size)
        self.attn_head = layers.MultiHeadAttention(self.emb_size, self.head_num, bias=False)
        self.W1 = nn.Linear(self.emb_size, self.emb_size)
        self.W2 = nn.Linear(self.emb_size, self.emb_size)
        self.dropout_layer = nn.Dropout(self.dropout)
        self.layer_norm = nn.LayerNorm(self.emb_size)
        if self.pooling == 'attention':
            self.A = nn.Linear(self.emb_size, self.attention_size)
            self.A_out = nn.Linear(self.attention_size, 1, bias=False)
        self.item_bias = nn.Embedding(self.item_num, 1)

    def relation_vectors(self, feed_dict: dict) -> torch.Tensor:
        """Relation embedding plus, with ``include_val``, the candidate's attribute value: B × C × R × d."""
        r_vectors = self.relation_embeddings.weight[None, None]  # 1 × 1 × R × d
        if self.include_val:
            return r_vectors + self.entity_embeddings(feed_dict['item_val'])
        return r_vectors.expand(*feed_dict['item_id'].shape, -1, -1)

    def relational_logits(self, feed_dict: dict) -> torch.Tensor:
        """DistMult scores of each history item with each candidate under each relation: B × C × H × R."""
        his_vectors = self.entity_embeddings(feed_dict['history_items'])  # B × H × d
        ri_vectors = self.relation_vectors(feed_dict) * self.entity_embeddings(feed_dict['item_id'])[:, :, None, :]
        return torch.einsum('bhd,bcrd->bchr', his_vectors, ri_vectors)

    def relational_attention(self, feed_dict: dict) -> torch.Tensor:
        """ω(v_i, v_j, r) of Eq. 12: softmax over valid history items of ``relational_logits``, B × C × H × R."""
        valid = (feed_dict['history_items'] > 0)[:, None, :, None]
        return self.relational_logits(feed_dict).masked_fill(~valid, -torch.inf).softmax(dim=2)

    def history_weights(self, feed_dict: dict) -> torch.Tensor:
        """Weights of history items per relation before aggregation (KDA adds its temporal decay)."""
        return self.relational_attention(feed_dict)

    def rec_forward(self, feed_dict: dict) -> torch.Tensor:
        i_vectors = self.entity_embeddings(feed_dict['item_id'])  # B × C × d
        his_vectors = self.entity_embeddings(feed_dict['history_items'])  # B × H × d
        context = torch.einsum('bchr,bhd->bcrd', self.history_weights(feed_dict), his_vectors)  # Eq. 11
        for _ in range(self.layer_num):  # self-attention across the relation contexts
            residual = context
            context = self.attn_head(context, context, context)
            context = self.W2(self.W1(context).relu())
            context = self.layer_norm(residual + self.dropout_layer(context))
        u_vectors = self.user_embeddings(feed_dict['user_id'])
        if self.pooling == 'attention':  # Eq. 10, AGG
            user_attention = self.A_out(self.A(context * u_vectors[:, None, None, :]).tanh()).squeeze(-1)
            his_vector = (context * user_attention.softmax(dim=-1)[..., None]).sum(dim=-2)
        elif self.pooling == 'max':
            his_vector = context.max(dim=-2).values
        else:
            his_vector = context.mean(dim=-2)
        prediction = ((u_vectors[:, None, :] + his_vector) * i_vectors).sum(dim=-1)  # Eq. 9
        return prediction + self.item_bias(feed_dict['item_id']).squeeze(-1)

    def kg_forward(self, feed_dict: dict) -> torch.Tensor:
        """DistMult with the attribute value added to the relation (Eq. 15 scores): B × (1 + negatives)."""
        head_vectors = self.entity_embeddings(feed_dict['head_id'])
        tail_vectors = self.entity_embeddings(feed_dict['tail_id'])
        relation_vectors = self.relation_embeddings(feed_dict['relation_id'])
        if self.include_val:
            relation_vectors = relation_vectors + self.entity_embeddings(feed_dict['value_id'])
        return (head_vectors * relation_vectors[:, None, :] * tail_vectors).sum(-1)

    def forward(self, feed_dict: dict) -> dict:
        out_dict = {'prediction': self.rec_forward(feed_dict)}
        if feed_dict['phase'] == 'train' and 'head_id' in feed_dict:
            out_dict['kg_prediction'] = self.kg_forward(feed_dict)
        return out_dict

    def loss(self, out_dict: dict) -> torch.Tensor:
        """L_rec + γ L_kge (Eq. 16 without LRD), both BPR against softmax-weighted negatives."""
        loss = super().loss(out_dict)
        if 'kg_prediction' in out_dict:
            loss = loss + self.gamma * super().loss({'prediction': out_dict['kg_prediction']})
        return loss

    class Dataset(SequentialModel.Dataset):
        def _prepare(self) -> None:
            extra = self.model.relation_num - self.corpus.n_relations
            self.item_val = np.pad(self.corpus.item_val, ((0, 0), (0, extra)))  # latent relations: value 0
            self.kg_train = self.phase == 'train' and self.model.gamma > 0
            super()._prepare()

        @batched
        def _get_feed_dict(self, index):
            feed_dict = SequentialModel.Dataset._get_feed_dict(self, index)
            feed_dict['item_val'] = self.item_val[feed_dict['item_id']]  # B × C × R
            if self.kg_train:
                for key in ('head_id', 'tail_id', 'relation_id', 'value_id'):
                    feed_dict[key] = self.kg_data[key][index]
            return feed_dict

        def actions_before_epoch(self) -> None:
            super().actions_before_epoch()
            if self.kg_train:
                self.kg_data = self.sample_kg_batch(len(self))

        def sample_kg_batch(self, n: int) -> dict[str, np.ndarray]:
            """n triplets with ``num_neg`` corrupted copies each, all drawn at once.

            Attribute facts (item, value) become item pairs by drawing a partner that shares the value;
            corruption replaces the head (probability ``neg_head_p``) or the tail by a random item, and
            any corruption that is itself a true triplet is redrawn (sorted-key membership test).
            """
            corpus, rng, num_neg = self.corpus, self.rng, self.model.num_neg
            rel = corpus.relation_df
            pick = rng.choice(len(rel), size=n, replace=n > len(rel))
            heads = rel['head'].to_numpy()[pick]
            relations = rel['relation'].to_numpy()[pick]
            tails = rel['tail'].to_numpy()[pick].copy()
            values = np.where(tails >= corpus.n_items, tails, 0)
            is_attr = values > 0
            tails[is_attr] = corpus.sample_attribute_partners(values[is_attr], rng)

            corrupt_head = rng.random((n, num_neg)) < self.model.neg_head_p
            candidates = rng.integers(1, corpus.n_items, size=(n, num_neg))
            todo = np.ones((n, num_neg), dtype=bool)
            while todo.any():
                rows = np.nonzero(todo)[0]
                cand = candidates[todo]
                neg_h = np.where(corrupt_head[todo], cand, heads[rows])
                neg_t = np.where(corrupt_head[todo], tails[rows], cand)
                # an attribute triplet is true when the corrupted item has the same value
                key = np.where(is_attr[rows], corpus.triplet_key(cand, relations[rows], values[rows]),
                               corpus.triplet_key(neg_h, relations[rows], neg_t))
                bad = contains(corpus.triplet_keys, key)
                todo[todo] = bad
                candidates[todo] = rng.integers(1, corpus.n_items, size=int(todo.sum()))
            neg_heads = np.where(corrupt_head, candidates, heads[:, None])
            neg_tails = np.where(corrupt_head, tails[:, None], candidates)
            return {'head_id': np.concatenate([heads[:, None], neg_heads], axis=1),
                    'tail_id': np.concatenate([tails[:, None], neg_tails], axis=1),
                    'relation_id': relations, 'value_id': values}
