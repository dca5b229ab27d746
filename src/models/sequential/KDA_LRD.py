"""KDA_LRD: KDA with Latent Relation Discovery (Yang et al., "Sequential Recommendation with Latent
Relations based on Large Language Model", SIGIR 2024). K latent relation types join KDA's
relation-wise attention; the LRD task (utils/lrd.py) shapes them from the items' language features.
Paper protocol: KDA's settings plus --latent_relation_num 5..10 --lamda {0.1, 1, 5, 10} --alpha 0.1.
"""
from __future__ import annotations

import argparse

from models.sequential.KDA import KDA
from utils.lrd import LRD_LOG_ARGS, LRDDataset, LRDModel, LatentRelationDiscovery


class KDA_LRD(LRDModel, KDA):
    extra_log_args = KDA.extra_log_args + LRD_LOG_ARGS

    @staticmethod
    def parse_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return KDA.parse_model_args(LatentRelationDiscovery.parse_lrd_args(parser))

    class Dataset(LRDDataset, KDA.Dataset):
        pass
