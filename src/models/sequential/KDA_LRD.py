"""KDA_LRD: KDA with Latent Relation Discovery (Yang et al., "Sequential Recommendation with Latent
Relations based on Large Language Model", SIGIR 2024). K latent relation types join KDA's
relation-wise attention; the LRD task (utils/lrd.py) shapes them from the items' language features.
Paper protocol: KDA's settings plus --latent_relation_num 5..10 --lamda {0.1, 1, 5, 10} --alpha 0.1.
"""
from __future__ import annotations

import argparse

import torch

from models.sequential.KDA import KDA
from utils.lrd import LRD_LOG_ARGS, LRDDataset, LatentRelationDiscovery, add_lrd, lrd_relation_num


class KDA_LRD(KDA):
    reader = 'LRDReader'
    extra_log_args = KDA.extra_log_args + LRD_LOG_ARGS

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return KDA.parse_model_args(LatentRelationDiscovery.parse_lrd_args(parser))

    def __init__(self, args: argparse.Namespace, corpus):
        super().__init__(args, corpus)
        add_lrd(self, args, corpus)

    def extra_relation_num(self, args: argparse.Namespace) -> int:
        return lrd_relation_num(args)

    def forward(self, feed_dict: dict) -> dict:
        out_dict = super().forward(feed_dict)
        if self.lrd is not None and feed_dict['phase'] == 'train':
            out_dict['lrd_loss'] = self.lrd(feed_dict)
        return out_dict

    def loss(self, out_dict: dict) -> torch.Tensor:
        loss = super().loss(out_dict)
        return loss + self.lrd.lamda * out_dict['lrd_loss'] if 'lrd_loss' in out_dict else loss

    class Dataset(LRDDataset, KDA.Dataset):
        pass
