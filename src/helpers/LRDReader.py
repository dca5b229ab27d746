"""Item texts and their frozen language-model embeddings for LRD (paper §3.2.2, Eq. 3 input).

Texts come from ``<Dataset>.text`` (``id<TAB>text`` keyed by the raw item key) and
``<Dataset>.item2index`` (raw key → item id). Every item needs a text: missing ones are an error
(count and first ids) unless ``--missing_text empty`` asks to embed an empty string for them.
Built on ``KDAReader`` so that KDA_LRD gets interval spectra; RCF_LRD uses it too and simply ignores
them (``--freq_rand 1`` skips their computation).
"""
from __future__ import annotations

import argparse
import csv
import logging
import os

import numpy as np
import pandas as pd

from helpers.KDAReader import KDAReader
from utils import io
from utils.corpus_cache import cache_dir
from utils.text_encoders import item_text_features, load_feature_file


class LRDReader(KDAReader):
    @staticmethod
    def parse_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument('--include_lrd', type=int, default=1,
                            help='Whether to use latent relation discovery (0 = the plain backbone, "w/o LRD").')
        parser.add_argument('--plm_name', type=str, default='minilm',
                            help='Text encoder: minilm (offline all-MiniLM-L6-v2), st:<sentence-transformers '
                                 'name or path>, openai:<model> (OPENAI_API_KEY), or feat:<name> for the '
                                 "authors' <Dataset>.feat.<name> file.")
        parser.add_argument('--plm_device', type=str, default='cpu',
                            help='Device for encoding item texts (e.g. cuda).')
        parser.add_argument('--plm_batch_size', type=int, default=0,
                            help='Texts per encoder batch (0 = the encoder default).')
        parser.add_argument('--lrd_feature', type=str, default='llm', choices=['llm', 'id'],
                            help='Input of the relation extractor: LLM features, or item ID embeddings '
                                 '("w/o LLM" ablation; no text is encoded then).')
        parser.add_argument('--text_fusion', type=int, default=0,
                            help='1: after training, fuse evaluation scores with the max cosine between the '
                                 "history items' and the candidate's language features, weight chosen on dev (not "
                                 'in the paper; docs/lrd.md). Loads the features even with --include_lrd 0.')
        parser.add_argument('--text_init', type=int, default=0,
                            help="1: the item ID embeddings start as the language features' top principal "
                                 'components, scaled to the init std (not in the paper; docs/lrd.md). Loads the '
                                 'features even with --include_lrd 0.')
        parser.add_argument('--missing_text', type=str, default='error', choices=['error', 'empty'],
                            help='What to do with items that have no text: stop, or embed an empty string.')
        return KDAReader.parse_data_args(parser)

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.item_features = None
        if (args.include_lrd and args.lrd_feature == 'llm') or args.text_fusion or args.text_init:
            self.item_features = self._item_features(args)
            logging.info(f'Item text features from {args.plm_name}: {self.item_features.shape}')

    def item_texts(self, missing: str = 'error') -> list[str]:
        """Text of every item id (index 0 = padding, empty)."""
        text_path = os.path.join(self.data_dir, f'{self.dataset}.text')
        map_path = os.path.join(self.data_dir, f'{self.dataset}.item2index')
        texts = io.read_table(text_path, '\t', ['id', 'text'], quoting=csv.QUOTE_NONE)  # titles may hold quotes
        mapping = pd.read_csv(map_path, sep='\t', header=None, names=['id', 'item_id'], dtype=str,
                              keep_default_na=False, quoting=csv.QUOTE_NONE)
        item_ids = io.int_column(mapping, 'item_id', map_path)
        found = mapping['id'].map(texts.drop_duplicates('id', keep='last').set_index('id')['text']).to_numpy()
        known = item_ids < self.n_items
        has_text = known & pd.notna(found)
        out = np.full(self.n_items, '', dtype=object)
        out[item_ids[has_text]] = found[has_text]
        no_text = np.flatnonzero(out[1:] == '') + 1
        missing_ids = sorted(set(item_ids[known & ~has_text].tolist()) | set(no_text.tolist()))
        if missing_ids:
            message = (f'{len(missing_ids)} item(s) have no text in {text_path} (via {map_path}); first ids: '
                       f'{missing_ids[:10]}')
            if missing == 'error':
                raise io.DataFormatError(message + '. Add their texts, or pass --missing_text empty to embed '
                                         'an empty string for them.')
            logging.warning(message + ': embedding an empty string for them (--missing_text empty).')
        return out.tolist()

    def _item_features(self, args: argparse.Namespace) -> np.ndarray:
        if args.plm_name.startswith('feat:'):
            path = os.path.join(self.data_dir, f'{self.dataset}.feat.{args.plm_name[5:]}')
            return load_feature_file(path, self.n_items).astype(np.float32)
        return item_text_features(self.item_texts(args.missing_text), encoder=args.plm_name,
                                  cache_dir=cache_dir(self.data_dir, self.dataset),
                                  device=args.plm_device, batch_size=args.plm_batch_size or None)
