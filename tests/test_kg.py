"""Knowledge graph (KGReader, RCF's KG sampling and loss), KDA's interval spectra, and the relation-aware
attention of RCF/KDA: padding never matters."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'src'))
sys.path.insert(1, str(REPO / 'bench'))

import main  # noqa: E402
from helpers.KDAReader import KDAReader  # noqa: E402
from helpers.KGReader import KGReader  # noqa: E402
from models.BaseModel import BaseModel  # noqa: E402
from models.sequential.KDA import KDA  # noqa: E402
from models.sequential.RCF import RCF  # noqa: E402
from temporal_kernel import main as temporal_kernel  # noqa: E402
from tiny_data import make_tiny_dataset  # noqa: E402
from utils.io import DataFormatError  # noqa: E402

HEADER = 'user_id\titem_id\ttime'
HEADER_NEG = 'user_id\titem_id\ttime\tneg_items'

# Hand-made catalogue: item → (i_color, i_size, r_comp, r_sub). Columns deliberately interleave i_ and r_.
META = {
    1: (1, 1, '[2, 3]', '[]'),
    2: (1, 2, '[]', '[6]'),
    3: (2, 0, '[1]', '[]'),
    4: (0, 1, '[]', '[5]'),
    5: (2, 1, '[6]', '[]'),
    6: (1, 0, '[]', '[2]'),
}
META_ORDER = [4, 1, 6, 3, 5, 2]  # file order, not id order
TRUE_ITEM_ITEM = {(1, 1, 2), (1, 1, 3), (1, 3, 1), (1, 5, 6), (2, 2, 6), (2, 4, 5), (2, 6, 2)}  # (r, head, tail)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines) + '\n')
    return path


def write_interactions(folder: Path, train, dev, test) -> None:
    write_lines(folder / 'train.csv', [HEADER] + [f'{u}\t{i}\t{t}' for u, i, t in train])
    write_lines(folder / 'dev.csv', [HEADER_NEG] + [f'{u}\t{i}\t{t}\t{n}' for u, i, t, n in dev])
    write_lines(folder / 'test.csv', [HEADER_NEG] + [f'{u}\t{i}\t{t}\t{n}' for u, i, t, n in test])


def write_meta(folder: Path, rows: dict, order: list[int], header: str = 'item_id\ti_color\tr_comp\ti_size\tr_sub'
               ) -> Path:
    lines = [header] + [f'{i}\t{rows[i][0]}\t{rows[i][2]}\t{rows[i][1]}\t{rows[i][3]}' for i in order]
    return write_lines(folder / 'item_meta.csv', lines)


def write_kg_dataset(root: Path, meta: dict = META, order: list[int] = META_ORDER) -> Path:
    folder = root / 'KG'
    write_interactions(folder,
                       train=[(1, 1, 100), (2, 6, 110), (3, 4, 120), (1, 2, 200), (2, 5, 210), (3, 6, 220),
                              (1, 3, 300), (2, 1, 310), (3, 2, 320)],
                       dev=[(1, 4, 400, '[5]'), (2, 2, 410, '[3]'), (3, 1, 420, '[3]')],
                       test=[(1, 5, 500, '[6]'), (2, 3, 510, '[4]'), (3, 5, 520, '[3]')])
    return write_meta(folder, meta, order)


def parse(model: str, root: Path, dataset: str, *extra: str) -> argparse.Namespace:
    argv = ['--model_name', model, '--path', str(root), '--dataset', dataset, '--gpu', '', *extra]
    parser, *_ = main.build_parser(argv)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- triplets

def triplets(corpus) -> set:
    df = corpus.relation_df
    return set(zip(df['relation'].tolist(), df['head'].tolist(), df['tail'].tolist()))


def test_triplets_without_attributes(tmp_path):
    write_kg_dataset(tmp_path)
    corpus = KGReader(parse('RCF', tmp_path, 'KG'))
    assert corpus.n_items == 7 and corpus.n_entities == 7
    assert corpus.item_relations == ['r_comp', 'r_sub'] and corpus.attr_relations == []
    assert corpus.relations == ['r_comp', 'r_sub'] and corpus.n_relations == 3
    assert triplets(corpus) == TRUE_ITEM_ITEM
    assert corpus.item_val.shape == (7, 3) and not corpus.item_val.any()


def test_triplets_with_attributes(tmp_path):
    write_kg_dataset(tmp_path)
    corpus = KGReader(parse('RCF', tmp_path, 'KG', '--include_attr', '1'))
    # relation order: 0 virtual, then r_* in file order, then i_* in file order
    assert corpus.relations == ['r_comp', 'r_sub', 'i_color', 'i_size'] and corpus.n_relations == 5
    # entities: items 0..6, then i_color values 0..2 → 7..9, then i_size values 0..2 → 10..12
    assert corpus.attr_max == [3, 3] and corpus.n_entities == 13
    color = {(3, 1, 8), (3, 2, 8), (3, 6, 8), (3, 3, 9), (3, 5, 9)}  # value 0 (item 4) is missing: no fact
    size = {(4, 1, 11), (4, 4, 11), (4, 5, 11), (4, 2, 12)}
    assert triplets(corpus) == TRUE_ITEM_ITEM | color | size
    counts = corpus.relation_df['relation'].value_counts().sort_index()
    assert counts.to_dict() == {1: 4, 2: 3, 3: 5, 4: 4}
    expected_val = np.zeros((7, 5), dtype=np.int64)
    for r, h, t in color | size:
        expected_val[h, r] = t
    np.testing.assert_array_equal(corpus.item_val, expected_val)
    # membership keys of every true triplet, and nothing else among all candidate (h, r, t)
    h, r, t = np.meshgrid(np.arange(13), np.arange(5), np.arange(13), indexing='ij')
    keys = corpus.triplet_key(h.ravel(), r.ravel(), t.ravel())
    stored = set(corpus.triplet_keys.tolist())
    hits = {(int(rr), int(hh), int(tt)) for hh, rr, tt, k in zip(h.ravel(), r.ravel(), t.ravel(), keys.tolist())
            if k in stored}
    assert hits == triplets(corpus)


def test_attribute_partners_share_the_value(tmp_path):
    write_kg_dataset(tmp_path)
    corpus = KGReader(parse('RCF', tmp_path, 'KG', '--include_attr', '1'))
    rng = np.random.default_rng(0)
    for entity, members in [(8, {1, 2, 6}), (9, {3, 5}), (11, {1, 4, 5}), (12, {2})]:
        partners = corpus.sample_attribute_partners(np.full(300, entity), rng)
        assert set(partners.tolist()) == members, entity
    mixed = np.array([8, 12, 9, 11] * 50)
    partners = corpus.sample_attribute_partners(mixed, rng)
    relation = np.where(mixed < 10, 3, 4)
    np.testing.assert_array_equal(corpus.item_val[partners, relation], mixed)


def kg_model(root: Path, dataset: str, *extra: str):
    args = parse('RCF', root, dataset, '--include_attr', '1', '--emb_size', '8', *extra)
    corpus = KGReader(args)
    torch.manual_seed(0)
    return RCF(args, corpus), corpus


def test_kg_batch_positives_true_and_negatives_never_true(tmp_path):
    write_kg_dataset(tmp_path)
    model, corpus = kg_model(tmp_path, 'KG', '--num_neg', '4')
    data = RCF.Dataset(model, corpus, 'train')
    data.prepare()
    kg = data.sample_kg_batch(3000)
    heads, tails, relations, values = kg['head_id'], kg['tail_id'], kg['relation_id'], kg['value_id']
    assert heads.shape == tails.shape == (3000, 5) and relations.shape == values.shape == (3000,)
    attr = relations >= 3
    assert set(relations.tolist()) == {1, 2, 3, 4}
    # positives: item-item triplets are listed facts; attribute ones are two items sharing the value
    for r, h, t, v, a in zip(relations, heads[:, 0], tails[:, 0], values, attr):
        if a:
            assert v >= corpus.n_items and corpus.item_val[h, r] == v and corpus.item_val[t, r] == v
        else:
            assert v == 0 and (r, h, t) in TRUE_ITEM_ITEM
    # negatives: one side corrupted by an item, never a true triplet
    neg_h, neg_t = heads[:, 1:], tails[:, 1:]
    head_kept, tail_kept = neg_h == heads[:, :1], neg_t == tails[:, :1]
    assert (head_kept | tail_kept).all()
    assert (~head_kept).any() and (~tail_kept).any()  # both head and tail corruption happen
    assert neg_h.min() >= 1 and neg_t.min() >= 1 and neg_h.max() < corpus.n_items and neg_t.max() < corpus.n_items
    n_checked = 0
    for row in range(3000):
        r, v = relations[row], values[row]
        for nh, nt in zip(neg_h[row], neg_t[row]):
            if attr[row]:
                assert not (corpus.item_val[nh, r] == v and corpus.item_val[nt, r] == v), (row, nh, nt, r, v)
            else:
                assert (r, nh, nt) not in TRUE_ITEM_ITEM, (row, nh, nt, r)
            n_checked += 1
    assert n_checked == 12000


def test_kg_feed_dict_and_gamma(tmp_path):
    write_kg_dataset(tmp_path)
    model, corpus = kg_model(tmp_path, 'KG', '--num_neg', '2')
    assert model.gamma == pytest.approx(16 / 15)  # γ = -1: #triplets / #interactions
    data = RCF.Dataset(model, corpus, 'train')
    data.prepare()
    data.actions_before_epoch()
    batch = data[np.arange(len(data))]
    assert batch['head_id'].shape == batch['tail_id'].shape == (len(data), 3)
    assert batch['relation_id'].shape == batch['value_id'].shape == (len(data),)
    assert batch['item_val'].shape == (len(data), 3, 5)
    np.testing.assert_array_equal(batch['item_val'].numpy(), corpus.item_val[batch['item_id'].numpy()])


def test_kg_loss_reaches_entity_and_relation_embeddings(tmp_path):
    write_kg_dataset(tmp_path)
    model, corpus = kg_model(tmp_path, 'KG', '--num_neg', '2')
    data = RCF.Dataset(model, corpus, 'train')
    data.prepare()
    data.actions_before_epoch()
    batch = data[np.arange(len(data))]
    model.train()
    out = model(batch)
    assert out['kg_prediction'].shape == (len(data), 3)
    rec_loss = BaseModel.loss(model, {'prediction': out['prediction']})
    kg_loss = BaseModel.loss(model, {'prediction': out['kg_prediction']})
    torch.testing.assert_close(model.loss(out), rec_loss + model.gamma * kg_loss)
    kg_loss.backward()
    used_entities = set(batch['head_id'].flatten().tolist()) | set(batch['tail_id'].flatten().tolist()) \
        | set(batch['value_id'].tolist())
    used_relations = set(batch['relation_id'].tolist())
    entity_grad = model.entity_embeddings.weight.grad.abs().sum(1)
    relation_grad = model.relation_embeddings.weight.grad.abs().sum(1)
    for e in range(corpus.n_entities):
        assert (entity_grad[e] > 0) == (e in used_entities), e
    for r in range(corpus.n_relations):
        assert (relation_grad[r] > 0) == (r in used_relations), r
    assert any(v >= corpus.n_items for v in used_entities)  # attribute values are trained too


def test_include_kge_0_has_no_kg_task(tmp_path):
    write_kg_dataset(tmp_path)
    model, corpus = kg_model(tmp_path, 'KG', '--include_kge', '0')
    assert model.gamma == 0
    data = RCF.Dataset(model, corpus, 'train')
    data.prepare()
    data.actions_before_epoch()
    batch = data[np.arange(len(data))]
    assert 'head_id' not in batch
    out = model(batch)
    assert set(out) == {'prediction'}


def test_init_xavier_changes_linear_layers_only(tmp_path):
    """--init xavier: Linear weights at Xavier scale with zero bias; embeddings keep ReChorus' N(0, 0.01)."""
    write_kg_dataset(tmp_path)
    normal, _ = kg_model(tmp_path, 'KG', '--emb_size', '64')
    xavier, _ = kg_model(tmp_path, 'KG', '--emb_size', '64', '--init', 'xavier')
    bound = (6 / (64 + 64)) ** 0.5  # Xavier-uniform limit of a 64 x 64 layer
    for model in (normal, xavier):
        assert abs(model.entity_embeddings.weight.std().item() - 0.01) < 0.002
    assert normal.W1.weight.abs().max().item() < 0.06 and normal.W1.bias.abs().max().item() > 0
    assert 0.9 * bound < xavier.W1.weight.abs().max().item() <= bound
    assert xavier.W1.bias.abs().max().item() == 0
    assert 0.9 * bound < xavier.attn_head.v_linear.weight.abs().max().item() <= bound


# --------------------------------------------------------------------------- malformed item_meta

def meta_error(root: Path, *extra: str) -> str:
    with pytest.raises(DataFormatError) as info:
        KGReader(parse('RCF', root, 'KG', *extra))
    assert '\n' not in str(info.value)
    return str(info.value)


def test_unknown_item_in_relation_list(tmp_path):
    path = write_kg_dataset(tmp_path, {**META, 1: (1, 1, '[2, 99]', '[]')})
    assert meta_error(tmp_path) == f'{path} line 3: r_comp lists item 99, which is not a known item id (1..6)'


def test_padding_item_in_relation_list(tmp_path):
    path = write_kg_dataset(tmp_path, {**META, 5: (2, 1, '[6]', '[0]')})
    assert meta_error(tmp_path) == f'{path} line 6: r_sub lists item 0, which is not a known item id (1..6)'


def test_relation_cell_that_is_not_a_list(tmp_path):
    path = write_kg_dataset(tmp_path, {**META, 6: (1, 0, '[]', '2')})
    assert meta_error(tmp_path) == f"{path} line 4: r_sub '2' is not a list like [1, 2, 3]"


def test_relation_list_with_a_non_integer(tmp_path):
    path = write_kg_dataset(tmp_path, {**META, 3: (2, 0, '[1, B00X]', '[]')})
    assert meta_error(tmp_path) == f"{path} line 5: r_comp contains 'B00X', which is not an integer id"


def test_missing_item_id_column(tmp_path):
    path = write_kg_dataset(tmp_path)
    text = path.read_text().replace('item_id\t', 'iid\t', 1)
    path.write_text(text)
    assert meta_error(tmp_path).startswith(f"{path} line 1: missing column(s) ['item_id']")


def test_item_meta_row_of_an_unknown_item(tmp_path):
    path = write_kg_dataset(tmp_path, {**META, 9: (1, 1, '[]', '[]')}, META_ORDER + [9])
    assert meta_error(tmp_path) == f'{path} line 8: item_id 9 does not occur in the interactions (known ids 1..6)'


def test_item_meta_with_a_repeated_item(tmp_path):
    path = write_kg_dataset(tmp_path, META, META_ORDER + [META_ORDER[0]])
    assert meta_error(tmp_path) == (f'{path} line {len(META_ORDER) + 2}: item_id {META_ORDER[0]} appears a '
                                    f'second time (one row per item)')


def test_attribute_code_must_be_a_non_negative_integer(tmp_path):
    path = write_kg_dataset(tmp_path, {**META, 2: ('red', 2, '[]', '[6]')})
    assert meta_error(tmp_path, '--include_attr', '1') == f"{path} line 7: i_color 'red' is not an integer"
    KGReader(parse('RCF', tmp_path, 'KG'))  # attribute columns are not read without --include_attr 1
    path = write_kg_dataset(tmp_path, {**META, 2: (1, -2, '[]', '[6]')})
    assert meta_error(tmp_path, '--include_attr', '1') == f'{path} line 7: i_size must be a code >= 0 (0 = missing)'


def test_missing_item_meta_file(tmp_path):
    path = write_kg_dataset(tmp_path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match='item_meta.csv: file not found'):
        KGReader(parse('RCF', tmp_path, 'KG'))


# --------------------------------------------------------------------------- KDA interval spectra

# Relations: r_comp 1→[3], 4→[3], 3→[2] (directed: head earlier, tail later); i_cat codes, 0 = missing.
KDA_META = {1: (0, '[3]'), 2: (0, '[]'), 3: (2, '[2]'), 4: (2, '[3]'), 5: (1, '[]'), 6: (1, '[]')}


def write_kda_dataset(root: Path) -> Path:
    folder = root / 'Gaps'
    write_interactions(folder,
                       train=[(2, 4, 100), (2, 1, 700), (2, 3, 700), (1, 1, 1000), (2, 2, 1000), (1, 4, 1600),
                              (1, 2, 2000), (1, 3, 5000)],
                       dev=[(1, 5, 9000, '[2]'), (2, 6, 2000, '[3]')],
                       test=[(1, 6, 9100, '[2]'), (2, 5, 3000, '[3]')])
    write_lines(folder / 'item_meta.csv', ['item_id\ti_cat\tr_comp'] +
                [f'{i}\t{c}\t{r}' for i, (c, r) in KDA_META.items()])
    return folder


def histogram(gaps: list[int], t_scalar: int = 60) -> np.ndarray:
    bins = [int(np.floor(max(np.log2(g / t_scalar + 1e-6), 0))) for g in gaps]
    counts = np.bincount(bins).astype(float)
    return counts / counts.max()


def test_interval_counts_by_relation(tmp_path):
    write_kda_dataset(tmp_path)
    corpus = KDAReader(parse('KDA', tmp_path, 'Gaps', '--include_attr', '1'))
    gaps = corpus._interval_counts()
    assert len(gaps) == 3
    # virtual relation: consecutive training gaps > 0 (dev/test times never count)
    assert sorted(gaps[0].tolist()) == sorted([600, 400, 3000, 600, 300])
    # r_comp: for each target, the most recent earlier item related to it (head earlier → tail later):
    # user 1's item 3 ← item 4 (3400 s), not item 1 (4000 s); user 2's item 3 ← item 4 (600 s), item 1 at the
    # same time is skipped (gap 0); user 2's item 2 ← item 3 (300 s). Item 2 of user 1 has no related earlier item.
    assert sorted(gaps[1].tolist()) == [300, 600, 3400]
    # i_cat: gaps between consecutive same-value items of a user; value 0 (missing) relates nothing
    assert sorted(gaps[2].tolist()) == [600, 3400]


def test_dft_initialisation_from_interval_histograms(tmp_path):
    write_kda_dataset(tmp_path)
    corpus = KDAReader(parse('KDA', tmp_path, 'Gaps', '--include_attr', '1'))
    expected_hist = [histogram([600, 400, 3000, 600, 300]), histogram([3400, 600, 300]), histogram([3400, 600])]
    np.testing.assert_array_equal(expected_hist[0], [0, 0, 1, 1, 0, 0.5])
    np.testing.assert_array_equal(expected_hist[1], [0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(expected_hist[2], [0, 0, 0, 1, 0, 1])
    assert corpus.n_dft == 64 and corpus.freq_x.shape == (3, 33)
    for row, hist in enumerate(expected_hist):
        np.testing.assert_allclose(corpus.freq_x[row], 2 * np.fft.fft(hist / hist.max(), 64)[:33], atol=1e-12)


def test_n_dft_is_raised_to_cover_the_histogram_and_model_starts_from_it(tmp_path):
    write_kda_dataset(tmp_path)
    args = parse('KDA', tmp_path, 'Gaps', '--include_attr', '1', '--n_dft', '4', '--emb_size', '8')
    corpus = KDAReader(args)
    assert corpus.n_dft == 8 and corpus.freq_x.shape == (3, 5)  # 6 bins → 2 ** (int(log2 6) + 1)
    np.testing.assert_allclose(corpus.freq_x[2], 2 * np.fft.fft([0, 0, 0, 1, 0, 1], 8)[:5], atol=1e-12)
    model = KDA(args, corpus)
    assert model.freq_real.weight.shape == (3, 5)
    model.actions_before_train()
    np.testing.assert_allclose(model.freq_real.weight.detach().numpy(), corpus.freq_x.real, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.freq_imag.weight.detach().numpy(), corpus.freq_x.imag, rtol=1e-6, atol=1e-6)


def test_freq_rand_skips_the_spectra(tmp_path):
    write_kda_dataset(tmp_path)
    corpus = KDAReader(parse('KDA', tmp_path, 'Gaps', '--freq_rand', '1'))
    assert corpus.freq_x is None and corpus.n_dft == 64


# --------------------------------------------------------------------------- attention and padding

@pytest.fixture(scope='module')
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('data')
    make_tiny_dataset(root, n_users=12, n_items=30, n_neg=8)
    return root


def build(model_name: str, root: Path, *extra: str):
    cls = {'RCF': RCF, 'KDA': KDA}[model_name]
    args = parse(model_name, root, 'Tiny', '--include_attr', '1', '--emb_size', '16', '--num_heads', '2',
                 '--history_max', '8', *extra)
    corpus = (KDAReader if model_name == 'KDA' else KGReader)(args)
    torch.manual_seed(1)
    model = cls(args, corpus)
    model.actions_before_train()
    model.eval()
    data = cls.Dataset(model, corpus, 'dev')
    data.prepare()
    return model, data


def padded_batch(data):
    batch = data[np.arange(len(data))]
    lengths = batch['lengths'].numpy()
    assert lengths.min() < batch['history_items'].shape[1]  # the batch really has padding
    return batch


@pytest.mark.parametrize('model_name', ['RCF', 'KDA'])
def test_relational_attention_ignores_padding(model_name, tiny_root):
    model, data = build(model_name, tiny_root)
    batch = padded_batch(data)
    with torch.no_grad():
        attention = model.relational_attention(batch)
    b, c = batch['item_id'].shape
    assert attention.shape == (b, c, batch['history_items'].shape[1], model.relation_num)
    padded = (batch['history_items'] == 0)[:, None, :, None].expand_as(attention)
    assert (attention[padded] == 0).all()
    torch.testing.assert_close(attention.sum(dim=2), torch.ones(b, c, model.relation_num))


@pytest.mark.parametrize('model_name', ['RCF', 'KDA'])
@pytest.mark.parametrize('include_val', ['0', '1'])
def test_padded_batch_scores_equal_unpadded_scores(model_name, include_val, tiny_root):
    model, data = build(model_name, tiny_root, '--include_val', include_val)
    batch = padded_batch(data)
    with torch.no_grad():
        together = model(batch)['prediction']
        for i in range(len(data)):
            alone = model(data[[i]])['prediction']  # its own width: no padding
            assert data[[i]]['history_items'].shape[1] == batch['lengths'][i]
            torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('model_name', ['RCF', 'KDA'])
def test_padding_entity_and_padded_slots_do_not_change_scores(model_name, tiny_root):
    # with --include_val 0, entity 0 is only ever the padding of histories
    model, data = build(model_name, tiny_root, '--include_val', '0')
    batch = padded_batch(data)
    pad = batch['history_items'] == 0
    with torch.no_grad():
        before = model(batch)['prediction']
        model.entity_embeddings.weight[0] = torch.randn(model.emb_size) * 10
        changed = dict(batch)
        changed['history_times'] = torch.where(pad, 123456789, batch['history_times'])
        if 'history_delta_t' in batch:
            changed['history_delta_t'] = torch.where(pad, torch.tensor(7.5), batch['history_delta_t'])
        after = model(changed)['prediction']
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
        # control: the same perturbation of a real history item does change the scores
        model.entity_embeddings.weight[int(batch['history_items'][0, 0])] += torch.randn(model.emb_size) * 10
        assert not torch.allclose(model(changed)['prediction'], before, atol=1e-3)


def set_flat_decay(model: KDA, level: float) -> None:
    """Every relation's temporal kernel constant at ``level``: only the zero-frequency coefficient, which the
    conjugate-symmetric spectrum counts twice over 2F terms."""
    with torch.no_grad():
        model.freq_real.weight.zero_()
        model.freq_imag.weight.zero_()
        model.freq_real.weight[:, 0] = level * 2 * model.freq_dim


def test_epoch_summary_reports_the_temporal_weight_of_the_training_batches(tiny_root):
    model, data = build('KDA', tiny_root)
    batch = padded_batch(data)
    cells = int((batch['history_items'] > 0).sum()) * model.relation_num
    set_flat_decay(model, 0.25)
    with torch.no_grad():
        model(batch)  # evaluation: not counted
        assert model.epoch_summary() == ''
        model.train()
        model(batch)
        model(batch)
    assert model.epoch_summary() == (f'KDA temporal weight over {2 * cells:,} (history item, relation) cells: '
                                     'mean 0.25, 0.0% clamped to 0')
    assert model.epoch_summary() == ''  # reset after each report
    set_flat_decay(model, -0.5)
    with torch.no_grad():
        model(batch)
    assert model.epoch_summary() == (f'KDA temporal weight over {cells:,} (history item, relation) cells: mean 0, '
                                     '100.0% clamped to 0; near 0 everywhere: the history is switched off')


@pytest.mark.parametrize('freq_rand', ['0', '1'])
def test_decay_init_lifts_every_kernel_by_a_constant(freq_rand, tiny_root):
    """--decay_init L adds L to each relation's temporal weight at every gap, keeping the shape of its start."""
    gaps = torch.linspace(0, 20, 41)
    base, _ = build('KDA', tiny_root, '--freq_rand', freq_rand)
    lifted, _ = build('KDA', tiny_root, '--freq_rand', freq_rand, '--decay_init', '0.1')
    with torch.no_grad():
        torch.testing.assert_close(lifted.idft_decay(gaps), base.idft_decay(gaps) + 0.1, rtol=0, atol=1e-6)


def test_temporal_kernel_script_reads_checkpoints_and_training_states(tiny_root, tmp_path, capsys):
    """bench/temporal_kernel.py: the clamped decay of a saved model over the gap grid, from a checkpoint (state
    dict) or a training state (with its epoch); a model without a kernel and a truncated file are refused by name."""
    model, _ = build('KDA', tiny_root)
    set_flat_decay(model, 0.25)
    with torch.no_grad():
        model.freq_real.weight[0, 0] = -0.5 * 2 * model.freq_dim  # relation 0 clamped to 0 everywhere
    torch.save(model.state_dict(), tmp_path / 'm.pt')
    torch.save({'epoch': 7, 'model': model.state_dict()}, tmp_path / 'm.state.pt')
    checkpoint, state = temporal_kernel([str(tmp_path / 'm.pt'), str(tmp_path / 'm.state.pt'), '--max_gap', '5'])
    r = model.relation_num
    assert checkpoint['epoch'] is None and state['epoch'] == 7
    for row in (checkpoint, state):
        assert row['mean'] == pytest.approx(0.25 * (r - 1) / r, abs=1e-6)
        assert row['clamped_to_0'] == pytest.approx(1 / r)
        assert row['relation_means'] == pytest.approx([0.] + [0.25] * (r - 1), abs=1e-6)
    assert capsys.readouterr().out.count('"mean"') == 2
    rcf, _ = build('RCF', tiny_root)
    torch.save(rcf.state_dict(), tmp_path / 'rcf.pt')
    with pytest.raises(SystemExit, match='rcf.pt: no freq_real.weight, not a KDA or KDA_LRD model'):
        temporal_kernel([str(tmp_path / 'rcf.pt')])
    (tmp_path / 'cut.pt').write_bytes((tmp_path / 'm.pt').read_bytes()[:100])
    with pytest.raises(SystemExit, match=r'cut.pt: not a readable checkpoint or training state \('):
        temporal_kernel([str(tmp_path / 'cut.pt')])


def test_load_model_round_trip_and_clear_errors(tiny_root, tmp_path):
    """save_model / load_model restore the weights; a missing, truncated or mismatched checkpoint is one error
    naming the file and the likely cause, not torch's traceback."""
    model, _ = build('KDA', tiny_root)
    model.save_model(str(tmp_path / 'kda.pt'))
    assert [p.name for p in tmp_path.iterdir()] == ['kda.pt']  # the temp file of the atomic write is gone
    other, _ = build('KDA', tiny_root)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other.load_model(str(tmp_path / 'kda.pt'))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[name], value, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match=r'none.pt: no checkpoint there; train one first \(--train 1\)'):
        other.load_model(str(tmp_path / 'none.pt'))
    (tmp_path / 'cut.pt').write_bytes((tmp_path / 'kda.pt').read_bytes()[:100])
    with pytest.raises(ValueError, match=r'cut.pt: not a readable checkpoint \('):
        other.load_model(str(tmp_path / 'cut.pt'))
    wider, _ = build('KDA', tiny_root, '--emb_size', '32')
    with pytest.raises(ValueError, match=r'kda.pt: does not fit KDA built from these arguments .*size mismatch'):
        wider.load_model(str(tmp_path / 'kda.pt'))
    rcf, _ = build('RCF', tiny_root)
    with pytest.raises(ValueError, match=r'kda.pt: does not fit RCF .*Unexpected key'):
        rcf.load_model(str(tmp_path / 'kda.pt'))
