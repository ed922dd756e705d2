"""Every relative link of the user-facing Markdown resolves: README.md, docs/**/*.md, every
folder README (configs/<method>/README.md, the three benchmarks folders) and CHANGELOG.md.
A link names an existing file or folder; a ``#anchor`` on a Markdown target names one of its
headings (GitHub's anchor rule, shared with tests/test_provenance.py)."""
import os
import os.path as osp
import re

import pytest
from test_provenance import FENCE, heading_anchors
from testing_utils import ROOT

LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
INLINE_CODE = re.compile(r'`[^`]*`')
EXTERNAL = ('http://', 'https://', 'mailto:')


def markdown_files():
    """README.md and CHANGELOG.md at the top, docs/**/*.md and every README.md below."""
    prune = {'.git', '.venv', '.pytest_cache', 'work_dirs', 'data', '__pycache__',
             'results'}  # results: the study's generated files
    found = ['README.md', 'CHANGELOG.md']
    for root, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in prune)
        rel = osp.relpath(root, ROOT)
        if rel == '.':
            continue
        found += [osp.join(rel, f) for f in sorted(files)
                  if f == 'README.md' or (rel.split(osp.sep)[0] == 'docs' and f.endswith('.md'))]
    return found


def links(text: str):
    """(line number, target) of each Markdown link outside code blocks and code spans."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            for target in LINK.findall(INLINE_CODE.sub('', line)):
                yield number, target


def broken_links(path: str):
    with open(osp.join(ROOT, path)) as f:
        text = f.read()
    bad = []
    for number, target in links(text):
        if target.startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition('#')
        resolved = osp.normpath(osp.join(ROOT, osp.dirname(path), file_part)) if file_part \
            else osp.join(ROOT, path)
        if not resolved.startswith(ROOT + osp.sep) or not osp.exists(resolved):
            bad.append(f'{path}:{number}: {target} (no such file)')
        elif anchor and resolved.endswith('.md'):
            with open(resolved) as f:
                if anchor not in heading_anchors(f.read()):
                    bad.append(f'{path}:{number}: {target} (no such heading)')
    return bad


def test_the_checker_finds_links_and_skips_code(tmp_path):
    text = ('[a](pages/x.md#y) and ![img](i.png "title")\n`[no](code.md)`\n'
            '```\n[no](fenced.md)\n```\n[web](https://example.org)\n')
    assert [t for _, t in links(text)] == ['pages/x.md#y', 'i.png', 'https://example.org']


def test_the_user_facing_markdown_is_found():
    files = markdown_files()
    for expected in ('README.md', 'docs/README.md', 'docs/get_started.md',
                     'configs/dino_vmf/README.md', 'benchmarks/README.md'):
        assert expected in files


@pytest.mark.parametrize('path', markdown_files())
def test_every_relative_link_resolves(path):
    bad = broken_links(path)
    assert not bad, 'broken links:\n' + '\n'.join(bad)
