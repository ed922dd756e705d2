"""docs/reliability.md: at least 30 bad inputs, each row naming a test that exists."""
import os.path as osp
import re

from testing_utils import ROOT


def rows():
    text = open(osp.join(ROOT, 'docs', 'reliability.md'), encoding='utf-8').read()
    return [line for line in text.splitlines() if re.match(r'^\| \d+ \|', line)]


def test_at_least_30_rows_each_naming_an_existing_test():
    table = rows()
    assert len(table) >= 30
    current_file = None
    for row in table:
        test_cell = row.rstrip(' |').rsplit(' | ', 1)[-1]
        refs = re.findall(r'`(?:(tests/[\w/]+\.py|[\w]+\.py))?(?:::|\.\.\.)(test_\w+)?', test_cell)
        assert refs or test_cell in ('same', ), row
        for path, name in refs:
            if path:
                current_file = path if path.startswith('tests/') else next(
                    p for p in _test_files() if p.endswith('/' + path))
            if name:
                source = open(osp.join(ROOT, current_file), encoding='utf-8').read()
                assert f'def {name}(' in source, f'{current_file}::{name} ({row[:40]})'


def _test_files():
    import glob
    return [osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'tests', '**', 'test_*.py'),
                                                    recursive=True)]
