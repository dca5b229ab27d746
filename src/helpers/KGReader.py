"""Item relations and attributes from ``item_meta.csv`` as a knowledge graph of bounded size.

Relations are numbered: 0 = the virtual "appeared earlier in the sequence" relation, then the
item–item relations (``r_*`` columns), then with ``--include_attr 1`` the attribute relations
(``i_*`` columns). Attribute values are entities numbered after the last item. Two items related
through a shared attribute value are never materialised as pairs (Electronics implies 2.1 billion
of them): we keep (item, value) facts plus, per value, the list of its items, and sample a partner
item sharing the value when a triplet is needed.
"""
from __future__ import annotations

import argparse
import logging
import os

import numpy as np
import pandas as pd

from helpers.SeqReader import SeqReader
from utils import io
from utils.sampling import contains, sorted_unique


class KGReader(SeqReader):
    @staticmethod
    def parse_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--include_attr', type=int, default=0,
                            help='Whether include attribute-based relations.')
        return SeqReader.parse_data_args(parser)

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.include_attr = args.include_attr
        self._read_item_meta()
        self._construct_kg()

    def _read_item_meta(self) -> None:
        path = os.path.join(self.data_dir, 'item_meta.csv')
        raw = io.read_table(path, self.sep, ['item_id'])
        items = io.int_column(raw, 'item_id', path)
        unknown = items >= self.n_items
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise io.DataFormatError(f'{path} line {row + 2}: item_id {items[row]} does not occur in the '
                                     f'interactions (known ids 1..{self.n_items - 1})')
        duplicated = pd.Series(items).duplicated().to_numpy()
        if duplicated.any():
            row = int(np.flatnonzero(duplicated)[0])
            raise io.DataFormatError(f'{path} line {row + 2}: item_id {items[row]} appears a second time '
                                     f'(one row per item)')
        self.item_meta_df = pd.DataFrame({'item_id': items})
        self.item_relations = [c for c in raw.columns if c.startswith('r_')]
        self.attr_relations = [c for c in raw.columns if c.startswith('i_')] if self.include_attr else []
        self._relation_lists = {}
        for col in self.item_relations:
            values, offsets = io.parse_id_lists(raw[col], path, col)
            bad = (values < 1) | (values >= self.n_items)
            if bad.any():
                pos = int(np.flatnonzero(bad)[0])
                row = int(np.searchsorted(offsets, pos, side='right') - 1)
                raise io.DataFormatError(f'{path} line {row + 2}: {col} lists item {values[pos]}, which is not a '
                                         f'known item id (1..{self.n_items - 1})')
            self._relation_lists[col] = (values, offsets)
        for col in self.attr_relations:
            self.item_meta_df[col] = io.int_column(raw, col, path, positive=False)
            if (self.item_meta_df[col] < 0).any():
                row = int(np.flatnonzero(self.item_meta_df[col].to_numpy() < 0)[0])
                raise io.DataFormatError(f'{path} line {row + 2}: {col} must be a code >= 0 (0 = missing)')

    def _construct_kg(self) -> None:
        logging.info('Constructing relation triplets...')
        items = self.item_meta_df['item_id'].to_numpy()
        heads, relations, tails = [], [], []
        for r_idx, col in enumerate(self.item_relations):
            values, offsets = self._relation_lists[col]
            heads.append(np.repeat(items, np.diff(offsets)))
            tails.append(values)
            relations.append(np.full(len(values), r_idx + 1, dtype=np.int64))
        n_item_item = int(sum(len(t) for t in tails))

        self.attr_max: list[int] = []
        # item_val[i, r]: the attribute-value entity of item i under relation r (0 for non-attribute relations)
        self.n_relations = 1 + len(self.item_relations) + len(self.attr_relations)
        self.item_val = np.zeros((self.n_items, self.n_relations), dtype=np.int64)
        base = self.n_items
        implied_pairs = 0
        for a_idx, col in enumerate(self.attr_relations):
            relation_idx = len(self.item_relations) + a_idx + 1
            vals = self.item_meta_df[col].to_numpy()
            has = vals != 0
            entities = vals + base
            heads.append(items[has])
            tails.append(entities[has])
            relations.append(np.full(int(has.sum()), relation_idx, dtype=np.int64))
            self.item_val[items[has], relation_idx] = entities[has]
            implied_pairs += int((np.bincount(vals[has]).astype(np.int64) ** 2).sum())
            self.attr_max.append(int(vals.max()) + 1 if len(vals) else 1)
            base += self.attr_max[-1]
        self.n_entities = base

        self.relation_df = pd.DataFrame({
            'head': np.concatenate(heads) if heads else np.zeros(0, dtype=np.int64),
            'relation': np.concatenate(relations) if relations else np.zeros(0, dtype=np.int64),
            'tail': np.concatenate(tails) if tails else np.zeros(0, dtype=np.int64)})
        self.relations = self.item_relations + self.attr_relations
        self._index_attribute_groups()
        self.triplet_keys = sorted_unique(self.triplet_key(self.relation_df['head'].to_numpy(),
                                                       self.relation_df['relation'].to_numpy(),
                                                       self.relation_df['tail'].to_numpy()))
        logging.info(f'Item-item relations: {self.item_relations}; attribute relations: {self.attr_relations}')
        logging.info(f'"# relation": {self.n_relations}, "# triplet": {len(self.relation_df)} '
                     f'({n_item_item} item-item, {len(self.relation_df) - n_item_item} item-attribute; '
                     f'{implied_pairs} item pairs implied by shared attributes, not materialised)')

    def _index_attribute_groups(self) -> None:
        """CSR index ``value entity → items having it``, to sample a partner sharing an attribute."""
        attr = self.relation_df[self.relation_df['tail'] >= self.n_items]
        order = np.argsort(attr['tail'].to_numpy(), kind='stable')
        self.attr_group_items = attr['head'].to_numpy()[order]
        counts = np.bincount(attr['tail'].to_numpy() - self.n_items, minlength=self.n_entities - self.n_items)
        self.attr_group_start = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.attr_group_start[1:])

    def triplet_key(self, heads: np.ndarray, relations: np.ndarray, tails: np.ndarray) -> np.ndarray:
        """One int64 per (head, relation, tail), for vectorised membership tests against ``triplet_keys``."""
        n = np.int64(self.n_entities)
        return (np.asarray(relations, dtype=np.int64) * n + np.asarray(heads, dtype=np.int64)) * n \
            + np.asarray(tails, dtype=np.int64)

    def has_triplets(self, heads: np.ndarray, relations: np.ndarray | int, tails: np.ndarray) -> np.ndarray:
        """Whether each (head, relation, tail) is a true triplet of the graph, vectorised."""
        return contains(self.triplet_keys, self.triplet_key(heads, relations, tails))

    def sample_attribute_partners(self, entities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each attribute-value entity, a uniformly drawn item that has that value."""
        offset = entities - self.n_items
        start = self.attr_group_start[offset]
        count = self.attr_group_start[offset + 1] - start
        return self.attr_group_items[start + (rng.random(len(entities)) * count).astype(np.int64)]
