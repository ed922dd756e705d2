"""model-index.yml and configs/<method>/metafile.yml: mmpretrain's format, read by the
``modelindex`` package (installed with mmpretrain), consistent with the configs on disk."""
import glob
import os.path as osp

import yaml
from testing_utils import ROOT

METHODS = ('dino', 'dino_vmf', 'ibot', 'ibot_vmf', 'simdino', 'simdinov2')


def load_index():
    import modelindex
    return modelindex.load(osp.join(ROOT, 'model-index.yml'))


def test_index_loads_and_passes_modelindex_checks():
    index = load_index()
    assert index.check(silent=True) == []
    assert {c.name for c in index.collections} == {
        'DINO', 'DINO-vMF', 'iBOT', 'iBOT-vMF', 'SimDINO', 'SimDINOv2'}
    for model in index.models:
        assert model.in_collection in {c.name for c in index.collections}, model.name


def test_every_config_path_exists_and_every_method_config_is_listed():
    index = load_index()
    listed = [m.config for m in index.models]
    assert len(listed) == len(set(listed))
    for path in listed:
        assert osp.isfile(osp.join(ROOT, path)), path
    on_disk = {osp.relpath(p, ROOT) for method in METHODS
               for p in glob.glob(osp.join(ROOT, 'configs', method, '*.py'))
               if not osp.basename(p).startswith('demo')}
    assert on_disk == set(listed)


def test_each_method_folder_has_its_metafile_imported():
    with open(osp.join(ROOT, 'model-index.yml')) as f:
        imports = yaml.safe_load(f)['Import']
    assert imports == [f'configs/{m}/metafile.yml' for m in METHODS]


def test_published_results_name_their_source():
    for model in load_index().models:
        if model.results:
            source = model.data.get('Results Source', '')
            assert 'README' in source and '@' in source, model.name  # a pinned upstream file
            for result in model.results:
                assert result.dataset == 'ImageNet-1k'
                assert 0 < result.metrics['Top 1 Accuracy'] < 100


def test_every_collection_has_its_readme():
    # modelindex resolves README relative to the metafile; its check() flags a missing file
    for collection in load_index().collections:
        assert collection.readme == 'README.md', collection.name
        path = osp.join(osp.dirname(collection.filepath), collection.readme)
        assert osp.isfile(path), path
