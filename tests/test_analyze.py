"""analyze.py on a tiny trained KDA_LRD (and a KDA baseline): files written, numbers equal to the model's own."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'src'))

import analyze  # noqa: E402
import main  # noqa: E402
from analysis.case import all_ranks, evaluation_dataset, instance  # noqa: E402
from analysis.pairs import pair_relations  # noqa: E402
from analysis.trained import item_texts, load_trained  # noqa: E402
from tiny_data import make_tiny_dataset  # noqa: E402
from utils import corpus_cache  # noqa: E402
from utils import experiments as ex  # noqa: E402
from utils import results_csv as rc  # noqa: E402
from utils import run_pool  # noqa: E402
from utils.io import DataFormatError  # noqa: E402
from utils.metrics import ranking_metrics  # noqa: E402

LABELS = ['0 virtual', '1 complement', '2 substitute', '3 category', '4 brand',
          '5 latent 1', '6 latent 2', '7 latent 3']
METRICS = [f'{m}@{k}' for k in (5, 10) for m in ('HR', 'NDCG')]


def _close_logs():
    for handler in logging.root.handlers[:]:
        if isinstance(handler, logging.FileHandler):
            handler.close()
            logging.root.removeHandler(handler)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """KDA_LRD (3 latent relations, features from a feat: file) and KDA, one epoch each on tiny data."""
    root = tmp_path_factory.mktemp('analyze')
    folder = make_tiny_dataset(root / 'data')
    rng = np.random.default_rng(0)
    np.savetxt(folder / 'Tiny.feat.rand', rng.normal(size=(40, 12)))  # n_items - 1 rows: row 0 is prepended
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus_cache, 'REPO_DIR', root)  # keep corpus pickles out of the repository
        common = ['--path', str(root / 'data'), '--dataset', 'Tiny', '--epoch', '1', '--gpu', '', '--batch_size', '16',
                  '--eval_batch_size', '16', '--lr', '1e-2', '--include_attr', '1', '--emb_size', '16',
                  '--topk', '5,10']
        lrd_argv = ['--model_name', 'KDA_LRD', *common, '--plm_name', 'feat:rand', '--latent_relation_num', '3',
                    '--model_path', str(root / 'lrd.pt')]
        kda_argv = ['--model_name', 'KDA', *common, '--model_path', str(root / 'kda.pt')]
        try:  # KDA_LRD through exp.py's child entry point, which writes main()'s result as JSON
            assert run_pool.child_main([str(root / 'lrd.json'), *lrd_argv, '--log_file', str(root / 'lrd.txt')]) == 0
            kda_results = main.main(kda_argv + ['--log_file', str(root / 'kda.txt')])
        finally:
            _close_logs()
        yield {'root': root, 'lrd_argv': lrd_argv, 'kda_argv': kda_argv,
               'lrd_results': json.loads((root / 'lrd.json').read_text()), 'kda_results': kda_results}


def state(path) -> dict:
    return torch.load(path, weights_only=True)


def cosine(weight: torch.Tensor) -> np.ndarray:
    w = weight.double()
    return torch.nn.functional.cosine_similarity(w[:, None, :], w[None, :, :], dim=-1).numpy()


def test_child_result_json(trained):
    res = trained['lrd_results']
    assert res['best_epoch'] == 1 and set(METRICS) <= set(res['test']) and set(METRICS) <= set(res['dev'])


def test_heatmap_equals_cosine_of_relation_embeddings(trained, tmp_path):
    out = analyze.run(['heatmap', '--out_dir', str(tmp_path), *trained['lrd_argv']])
    for kind in ('png', 'csv', 'md'):
        assert Path(out[kind]).is_file() and Path(out[kind]).stat().st_size > 0
    assert Path(out['png']).name == 'heatmap_KDA_LRD_Tiny.png'
    table = pd.read_csv(out['csv'], index_col=0)
    assert list(table.index) == LABELS and list(table.columns) == LABELS
    expected = cosine(state(trained['root'] / 'lrd.pt')['relation_embeddings.weight'])
    np.testing.assert_allclose(table.to_numpy(), expected, atol=1e-9)
    assert 'latent × latent' in Path(out['md']).read_text()


def test_model_from_results_csv(trained, tmp_path):
    """--csv picks the best configuration's arguments and checkpoint from exp.py's CSV."""
    argv = [a for a in trained['lrd_argv']]
    i = argv.index('--model_path')
    spec, = ex.build_specs([argv[:i] + argv[i + 2:]])
    row = ex.result_row(spec, 'ok', results=trained['lrd_results'], argv=spec.argv + argv[i:i + 2])
    rc.write_results(tmp_path / 'results.csv', [row])
    out = analyze.run(['heatmap', '--csv', str(tmp_path / 'results.csv'), '--model_name', 'KDA_LRD',
                       '--out_dir', str(tmp_path), '--name', 'from_csv'])
    assert Path(out['png']).name == 'from_csv.png'
    expected = cosine(state(trained['root'] / 'lrd.pt')['relation_embeddings.weight'])
    np.testing.assert_allclose(out['similarity'], expected, atol=1e-9)
    # an ablation run (here the same checkpoint recorded as w/o KGE) is taken only when --where asks for it
    spec, = ex.build_specs([argv[:i] + argv[i + 2:] + ['--include_kge', '0']])
    row = ex.result_row(spec, 'ok', results=trained['lrd_results'], argv=spec.argv + argv[i:i + 2])
    rc.write_results(tmp_path / 'ablation.csv', [row])
    heatmap = ['heatmap', '--csv', str(tmp_path / 'ablation.csv'), '--model_name', 'KDA_LRD',
               '--out_dir', str(tmp_path)]
    with pytest.raises(ValueError, match='its ablation runs are taken only when asked for: --where include_kge=0$'):
        analyze.run(heatmap)
    out = analyze.run(heatmap + ['--where', 'include_kge=0'])
    np.testing.assert_allclose(out['similarity'], expected, atol=1e-9)


def test_pairs_top_scores_match_brute_force(trained, tmp_path):
    out = analyze.run(['pairs', '--out_dir', str(tmp_path), '--top_n', '3', '--chunk_size', '50',
                       *trained['lrd_argv']])
    for kind in ('png', 'csv', 'md'):
        assert Path(out[kind]).is_file()
    # the observed pairs: (earlier item, target) within each user's training sequence
    train = pd.read_csv(trained['root'] / 'data' / 'Tiny' / 'train.csv', sep='\t').sort_values(['user_id', 'time'])
    expected = set()
    for _, items in train.groupby('user_id')['item_id']:
        items = items.tolist()
        expected |= {(items[h], items[t]) for t in range(len(items)) for h in range(max(0, t - 20), t)
                     if items[h] != items[t]}
    assert out['n_pairs'] == len(expected)
    pairs = np.array(sorted(expected))
    # q and φ of every observed pair, straight from the checkpoint and the model
    loaded = load_trained(trained['lrd_argv'])
    with torch.no_grad():
        q = loaded.model.lrd.relation_distribution(torch.tensor(pairs[:, 0]), torch.tensor(pairs[:, 1])).numpy()
    weights = state(trained['root'] / 'lrd.pt')
    ent, rel = weights['entity_embeddings.weight'], weights['relation_embeddings.weight']
    phi = ((ent[pairs[:, 0]] * ent[pairs[:, 1]]) @ rel.T).numpy()
    table = out['table']
    assert set(table['relation_id']) == set(range(8)) and set(table['ranked_by']) == {'q', 'phi'}
    for r in range(8):
        for score, matrix in (('q', q), ('phi', phi)):
            sub = table[(table['relation_id'] == r) & (table['ranked_by'] == score)].sort_values('rank')
            np.testing.assert_allclose(sub[score].to_numpy(), np.sort(matrix[:, r])[::-1][:3], rtol=1e-5, atol=1e-7)
            for i, j, value in zip(sub['item_i'], sub['item_j'], sub[score]):
                k = np.flatnonzero((pairs[:, 0] == i) & (pairs[:, 1] == j))[0]
                assert matrix[k, r] == pytest.approx(value, rel=1e-5, abs=1e-7)
    usage = out['usage']
    np.testing.assert_allclose(usage['share_argmax_q'], np.bincount(q.argmax(1), minlength=8) / len(pairs))
    np.testing.assert_allclose(usage['mean_q'], q.mean(0), rtol=1e-5)
    texts = pd.read_csv(trained['root'] / 'data' / 'Tiny' / 'Tiny.text', sep='\t')
    item2index = pd.read_csv(trained['root'] / 'data' / 'Tiny' / 'Tiny.item2index', sep='\t', header=None,
                             names=['raw', 'item_id'])
    text_of = dict(zip(item2index['item_id'], item2index['raw'].map(dict(zip(texts['id'], texts['text'])))))
    assert all(t == text_of[i] for i, t in zip(table['item_i'], table['text_i']))
    md = Path(out['md']).read_text()
    assert '## Relation 5 latent 1' in md and text_of[table['item_i'].iloc[0]] in md


def test_pairs_shared_relations_match_item_meta(trained, tmp_path):
    out = analyze.run(['pairs', '--out_dir', str(tmp_path), '--pair_source', 'all', '--top_n', '1',
                       '--chunk_size', '97', *trained['lrd_argv']])
    meta = pd.read_csv(trained['root'] / 'data' / 'Tiny' / 'item_meta.csv', sep='\t').set_index('item_id')
    pairs = np.array([(i, j) for i in range(1, 41) for j in range(1, 41) if i != j])
    linked = {}
    for column in ('r_complement', 'r_substitute'):
        lists = {item: set(json.loads(cell)) for item, cell in meta[column].items()}
        linked[column] = np.array([j in lists[i] or i in lists[j] for i, j in pairs])
    for column in ('i_category', 'i_brand'):
        value = meta[column]
        linked[column] = np.array([value[i] != 0 and value[i] == value[j] for i, j in pairs])
    holds = np.stack([linked[c] for c in ('r_complement', 'r_substitute', 'i_category', 'i_brand')], axis=1)
    loaded = load_trained(trained['lrd_argv'])
    np.testing.assert_array_equal(pair_relations(loaded.corpus, pairs)[:, 1:], holds)
    with torch.no_grad():
        q = loaded.model.lrd.relation_distribution(torch.tensor(pairs[:, 0]), torch.tensor(pairs[:, 1]))
    q = q.double().numpy()
    shared = out['shared']
    assert list(shared['relation']) == ['all scored pairs'] + LABELS
    assert list(shared.columns[2:]) == [f'linked by {label}' for label in LABELS[1:5]]
    np.testing.assert_allclose(shared.iloc[0, 2:].to_numpy(float), holds.mean(0))
    expected = (q.T @ holds) / q.sum(0)[:, None]
    np.testing.assert_allclose(shared.iloc[1:, 2:].to_numpy(float), expected, rtol=1e-5)
    np.testing.assert_allclose(shared['q mass'].to_numpy(float)[1:], q.mean(0), rtol=1e-5)
    assert '## What the pairs of each relation share' in Path(out['md']).read_text()
    assert Path(out['md']).with_name(Path(out['md']).stem + '_shared.csv').is_file()


def test_pairs_all_and_the_size_guard(trained, tmp_path):
    out = analyze.run(['pairs', '--out_dir', str(tmp_path), '--pair_source', 'all', '--top_n', '2',
                       '--relations', '5,6', *trained['lrd_argv']])
    assert out['n_pairs'] == 40 * 39 and set(out['table']['relation_id']) == {5, 6}
    with pytest.raises(ValueError, match='max_pairs'):
        analyze.run(['pairs', '--out_dir', str(tmp_path), '--pair_source', 'all', '--max_pairs', '1000',
                     *trained['lrd_argv']])


def test_case_study(trained, tmp_path):
    user = 7
    out = analyze.run(['case', '--out_dir', str(tmp_path), '--user_id', str(user), '--baseline_path',
                       str(trained['root'] / 'kda.pt'), *trained['lrd_argv']])
    for kind in ('png', 'csv', 'md'):
        assert Path(out[kind]).is_file()
    # the history is the user's interactions before the test item (train + dev), oldest first
    data = trained['root'] / 'data' / 'Tiny'
    seq = pd.concat([pd.read_csv(data / f'{p}.csv', sep='\t') for p in ('train', 'dev', 'test')])
    seq = seq[seq['user_id'] == user].sort_values('time')['item_id'].tolist()
    scores = out['scores']
    assert scores['target'] == seq[-1] and scores['history'].tolist() == seq[:-1][-20:]
    # numbers equal the model's own attention and q for that instance
    loaded = load_trained(trained['lrd_argv'])
    dataset = evaluation_dataset(loaded)
    _, feed = instance(dataset, user)
    with torch.no_grad():
        attention = loaded.model.relational_attention(feed)[0, 0, :len(seq) - 1].numpy()
        prediction = loaded.model(feed)['prediction'][0].numpy()
    table = out['table']
    np.testing.assert_allclose(table[[f'attention[{label}]' for label in LABELS]].to_numpy(), attention, rtol=1e-5)
    np.testing.assert_allclose(table[[f'q[{label}]' for label in LABELS]].sum(axis=1), 1.0, rtol=1e-5)
    assert list(table['strongest_attention']) == [LABELS[k] for k in attention.argmax(1)]
    assert scores['rank'] == int((prediction >= prediction[0]).sum())
    assert out['baseline_scores']['target'] == seq[-1]
    md = Path(out['md']).read_text()
    assert f'KDA_LRD ranks the target {scores["rank"]} of 21' in md
    assert f'KDA ranks it {out["baseline_scores"]["rank"]}' in md
    # every test rank together reproduces the test metrics main() reported for this checkpoint
    ranks = all_ranks(loaded, dataset)
    metrics = ranking_metrics(ranks, [5, 10], ['HR', 'NDCG'])
    for key in METRICS:
        assert metrics[key] == pytest.approx(trained['lrd_results']['test'][key], abs=1e-9)


def test_case_study_picks_the_most_improved_user(trained, tmp_path):
    out = analyze.run(['case', '--out_dir', str(tmp_path), '--baseline_path', str(trained['root'] / 'kda.pt'),
                       *trained['lrd_argv']])
    lrd = load_trained(trained['lrd_argv'])
    kda = load_trained(trained['kda_argv'])
    d_lrd, d_kda = evaluation_dataset(lrd), evaluation_dataset(kda)
    gain = pd.Series(all_ranks(kda, d_kda), index=d_kda.data['user_id']) \
        - pd.Series(all_ranks(lrd, d_lrd), index=d_lrd.data['user_id'])
    assert gain[out['user']] == gain.max()
    assert Path(out['png']).name == f'case_KDA_LRD_Tiny_u{out["user"]}.png'


# --------------------------------------------------------------------------- CSV-based analyses

def _row(model: str, args: list[str], seed: int, dev: float, test: float) -> dict:
    argv = ['--model_name', model, '--dataset', 'Office', *args, '--random_seed', str(seed)]
    config, values, run_name, error = ex.normalise(argv)
    assert not error
    spec = ex.RunSpec(argv, seed, model, 'Office', config, values, '', run_name)
    return ex.result_row(spec, 'ok', results={'dev': {m: dev for m in METRICS},
                                              'test': {m: test + (0.1 if m.startswith('HR') else 0) for m in METRICS}})


def test_item_texts_fall_back_to_ids_only_without_text_files(tmp_path):
    folder = make_tiny_dataset(tmp_path, n_users=5, n_items=10, n_neg=3)
    corpus = SimpleNamespace(data_dir=str(folder), dataset='Tiny', n_items=11)
    texts = item_texts(corpus)
    assert len(texts) == 11 and texts[0] == '' and all(texts[1:])
    mapping = folder / 'Tiny.item2index'
    mapping.write_text(mapping.read_text().replace('\t1\n', '\tone\n'))
    with pytest.raises(DataFormatError, match='Tiny.item2index'):
        item_texts(corpus)
    (folder / 'Tiny.text').unlink()
    assert item_texts(corpus) == [f'item {i}' for i in range(11)]


def test_ablation(tmp_path):
    rows = []
    for seed in (0, 1, 2):
        rows += [_row('KDA_LRD', [], seed, 0.30, 0.34 + seed * 0.01),
                 _row('KDA_LRD', ['--lr', '1e-4'], seed, 0.20, 0.50),  # worse on dev: not chosen
                 _row('KDA_LRD', ['--lrd_feature', 'id'], seed, 0.25, 0.32 + seed * 0.01),
                 _row('KDA_LRD', ['--include_kge', '0'], seed, 0.25, 0.31),
                 _row('KDA_LRD', ['--lamda', '0'] + ['--time_budget', '600'] * (seed == 0), seed, 0.40, 0.36),
                 _row('KDA_LRD', ['--include_kge', '0', '--lrd_feature', 'id'], seed, 0.9, 0.9),  # two ablations
                 _row('KDA', [], seed, 0.22, 0.30)]
    rc.write_results(tmp_path / 'ablation.csv', rows)
    out = analyze.run(['ablation', '--csv', str(tmp_path / 'ablation.csv'), '--out_dir', str(tmp_path)])
    for kind in ('png', 'csv', 'md'):
        assert Path(out[kind]).is_file()
    summary = pd.read_csv(out['csv']).set_index('variant')
    assert list(summary.index) == ['KDA_LRD', 'w/o LLM', 'w/o KGE', 'w/o LRD loss', 'w/o LRD']
    assert summary.loc['KDA_LRD', 'NDCG@5_mean'] == pytest.approx(0.35)
    assert summary.loc['KDA_LRD', 'NDCG@5_std'] == pytest.approx(0.01)
    assert summary.loc['KDA_LRD', 'HR@5_mean'] == pytest.approx(0.45)
    assert summary.loc['w/o LLM', 'NDCG@5_mean'] == pytest.approx(0.33)
    assert summary.loc['w/o KGE', 'NDCG@5_mean'] == pytest.approx(0.31)
    assert summary.loc['w/o LRD loss', 'NDCG@5_mean'] == pytest.approx(0.36)
    assert summary.loc['w/o LRD', 'source_model'] == 'KDA'  # no --include_lrd 0 runs: the backbone stands in
    assert (summary['n_seeds'] == 3).all()  # the λ = 0 seed run with a time budget pools with the others
    # the backbone's own w/o KGE runs, when there are some, are the control of the w/o KGE variant
    with_control = rows + [_row('KDA', ['--include_kge', '0'], seed, 0.2, 0.27) for seed in (0, 1)]
    rc.write_results(tmp_path / 'control.csv', with_control)
    control = pd.read_csv(analyze.run(['ablation', '--csv', str(tmp_path / 'control.csv'), '--out_dir', str(tmp_path),
                                       '--name', 'control'])['csv']).set_index('variant')
    assert list(control.index) == list(summary.index) + ['w/o LRD, w/o KGE']
    assert control.loc['w/o LRD, w/o KGE', 'source_model'] == 'KDA'
    assert control.loc['w/o LRD, w/o KGE', 'NDCG@5_mean'] == pytest.approx(0.27)
    assert control.loc['w/o LRD, w/o KGE', 'n_seeds'] == 2
    assert control.loc['w/o LRD', 'NDCG@5_mean'] == pytest.approx(0.30)  # still the full backbone
    rc.write_results(tmp_path / 'pool.csv', rows)  # ablation.csv is now the output of the call above
    unpooled = analyze.run(['ablation', '--csv', str(tmp_path / 'pool.csv'), '--out_dir', str(tmp_path),
                            '--name', 'unpooled', '--pool', ''])
    assert pd.read_csv(unpooled['csv']).set_index('variant').loc['w/o LRD loss', 'n_seeds'] < 3
    # with --include_lrd 0 runs, those are "w/o LRD"
    rows += [_row('KDA_LRD', ['--include_lrd', '0'], seed, 0.2, 0.29) for seed in (0, 1)]
    rc.write_results(tmp_path / 'ablation.csv', rows)
    out = analyze.run(['ablation', '--csv', str(tmp_path / 'ablation.csv'), '--out_dir', str(tmp_path)])
    summary = pd.read_csv(out['csv']).set_index('variant')
    assert summary.loc['w/o LRD', 'source_model'] == 'KDA_LRD'
    assert summary.loc['w/o LRD', 'NDCG@5_mean'] == pytest.approx(0.29)
    # text fusion without LRD (KDA+TF), in a second CSV, is not the w/o-LRD variant, however good on dev
    rc.write_results(tmp_path / 'fused.csv', [_row('KDA_LRD', ['--include_lrd', '0', '--text_fusion', '1'], seed, 0.8,
                                                   0.8) for seed in (0, 1, 2)])
    rc.write_results(tmp_path / 'runs.csv', rows)  # ablation.csv is now the output of the call above
    out = analyze.run(['ablation', '--csv', str(tmp_path / 'runs.csv'), str(tmp_path / 'fused.csv'),
                       '--out_dir', str(tmp_path)])
    summary = pd.read_csv(out['csv']).set_index('variant')
    assert summary.loc['w/o LRD', 'NDCG@5_mean'] == pytest.approx(0.29) and len(summary) == 5


def test_sensitivity(tmp_path):
    rows = []
    value = {(5, 0.1): 0.30, (5, 1.0): 0.34, (6, 0.1): 0.32, (6, 1.0): 0.38}
    for (k, lam), test in value.items():
        for seed in (0, 1):
            rows.append(_row('KDA_LRD', ['--latent_relation_num', str(k), '--lamda', str(lam)], seed, 0.3, test))
            rows.append(_row('KDA_LRD', ['--latent_relation_num', str(k), '--lamda', str(lam), '--lr', '1e-4'],
                             seed, 0.1, 0.9))  # worse on dev within the cell
    for k in (5, 6):  # λ = 0 (no discovery loss) is a point of the λ curve, other ablations are not
        rows.append(_row('KDA_LRD', ['--latent_relation_num', str(k), '--lamda', '0'], 0, 0.3, 0.20))
        rows.append(_row('KDA_LRD', ['--latent_relation_num', str(k), '--lamda', '0', '--include_kge', '0'],
                         0, 0.9, 0.9))
    rows.append(_row('KDA', [], 0, 0.5, 0.5))  # no K or λ: not a cell, the backbone line
    rows.append(_row('KDA', ['--lr', '1e-4'], 0, 0.4, 0.7))  # worse on dev: not the backbone's best
    rc.write_results(tmp_path / 'grid.csv', rows)
    out = analyze.run(['sensitivity', '--csv', str(tmp_path / 'grid.csv'), '--out_dir', str(tmp_path)])
    for kind in ('png', 'csv', 'md'):
        assert Path(out[kind]).is_file()
    curves = pd.read_csv(out['csv'])
    by_k = curves[curves['param'] == 'latent_relation_num'].set_index('value')['mean']
    by_lam = curves[curves['param'] == 'lamda'].set_index('value')['mean']
    assert by_k[5] == pytest.approx((0.20 + 0.30 + 0.34) / 3) and by_k[6] == pytest.approx((0.20 + 0.32 + 0.38) / 3)
    assert by_lam[0.1] == pytest.approx((0.30 + 0.32) / 2) and by_lam[1.0] == pytest.approx((0.34 + 0.38) / 2)
    assert by_lam[0.0] == pytest.approx(0.20)
    cells = pd.read_csv(Path(out['csv']).with_name('sensitivity_cells.csv'))
    assert len(cells) == 6 and list(cells['n_seeds']) == [1, 2, 2, 1, 2, 2]
    backbone = out['backbones'].set_index('model')
    assert list(backbone.index) == ['KDA'] and backbone.loc['KDA', 'mean'] == pytest.approx(0.5)
    assert '## Backbone' in Path(out['md']).read_text() and '1e-4' not in backbone.loc['KDA', 'config']
