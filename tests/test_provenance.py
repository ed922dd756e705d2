"""Citations stay inside the repository.

Every file of the repository may cite an in-repo doc heading
(``docs/methods.md#vmf-log-normaliser``),
a paper (arXiv id with equation or table) or an upstream file at a pinned commit, and nothing
else: no working notes outside the repository, no section numbers of documents a reader cannot
open. Every ``docs/<file>.md#<anchor>`` cited anywhere, and every ``(#anchor)`` link inside a doc,
must name a real heading, with GitHub's anchor rule (lower case, punctuation dropped, spaces to
hyphens, ``-1``, ``-2`` ... for repeated headings).
"""
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS_FILE = os.path.relpath(os.path.abspath(__file__), REPO)

# What a citation of a document outside the repository looks like.
OUTSIDE_DOCUMENT = [
    (re.compile(r'\.\./shared|/work/shared'), 'path outside the repository'),
    (re.compile(r'\b(?:anchors|dino_vmf|stack)\.md\b'), 'document not in the repository'),
    (re.compile('\u00a7'), 'section sign: cite a doc heading, a paper or a pinned file'),
    (re.compile(r'\[R\]'), "'[R]' marker: say 'reconstruction' and cite "
                           'docs/methods.md#reconstructed-choices'),
    (re.compile(r"\bspec(?:s|'s)?\b", re.IGNORECASE), "'spec': cite what it said instead"),
    (re.compile(r"\b(?:the|this|that) issue(?:'s)?\b|\bissue \d+\b", re.IGNORECASE),
     'a work item of the project: say what it found instead'),
]
# Python's import machinery calls its objects 'spec'; those lines are not citations.
IMPORTLIB_IDIOM = re.compile(r'importlib|spec\.loader')
DOC_ANCHOR = re.compile(r'\bdocs/([\w.-]+\.md)#([\w-]+)')
DOC_FILE = re.compile(r'\bdocs/([\w.-]+\.md)\b')
LOCAL_ANCHOR = re.compile(r'\]\(#([\w-]+)\)')
HEADING = re.compile(r'^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$')
FENCE = re.compile(r'^ {0,3}(```|~~~)')
SKIP_DIRS = {'.git', '.venv', 'work_dirs', 'data', '__pycache__', '.pytest_cache',
             'results'}  # benchmarks/results: the study driver's data files


def github_slug(text: str) -> str:
    """GitHub's heading anchor: lower case, drop what is not a letter, digit, '_', '-' or a
    space, then spaces to hyphens."""
    text = re.sub(r'[^\w\- ]', '', text.strip().lower())
    return text.replace(' ', '-')


def heading_anchors(markdown: str) -> set:
    """Anchors of the ATX headings outside fenced code blocks, with -1, -2 for repeats."""
    anchors, seen, in_fence = set(), {}, False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f'{slug}-{count}')
    return anchors


def outside_citations(text: str):
    """(line number, reason, line) for each citation of a document outside the repository."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, reason in OUTSIDE_DOCUMENT:
            if pattern.search(line) and not (reason.startswith("'spec'")
                                             and IMPORTLIB_IDIOM.search(line)):
                found.append((number, reason, line.strip()))
    return found


def tracked_text_files():
    """The repository's files (git's list when available, else a walk), text only."""
    try:
        out = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, capture_output=True,
                             check=True).stdout.decode()
        paths = [p for p in out.split('\0') if p]
    except (OSError, subprocess.CalledProcessError):
        paths = []
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            paths += [os.path.relpath(os.path.join(root, f), REPO) for f in files]
    texts = {}
    for path in paths:
        if any(part in SKIP_DIRS for part in path.split('/')[:-1]):
            continue
        full = os.path.join(REPO, path)
        if not os.path.isfile(full):
            continue
        with open(full, 'rb') as f:
            raw = f.read()
        if b'\0' in raw:
            continue
        try:
            texts[path] = raw.decode('utf-8')
        except UnicodeDecodeError:
            continue
    return texts


@pytest.fixture(scope='module')
def texts():
    files = tracked_text_files()
    assert 'README.md' in files and 'docs/methods.md' in files
    return files


# ----------------------------------------------------------------- the checkers themselves
def test_slug_follows_github():
    assert github_slug('vMF log-normaliser') == 'vmf-log-normaliser'
    assert (github_slug('Shared machinery (`SelfDistillation`)')
            == 'shared-machinery-selfdistillation')
    assert github_slug('SimDINO ViT-B/16 recipe') == 'simdino-vit-b16-recipe'
    assert github_slug('k-NN accuracy') == 'k-nn-accuracy'
    assert github_slug('SimDINO / SimDINOv2') == 'simdino--simdinov2'
    doc = '# Title\n## Notes\n```bash\n# not a heading\n```\n## Notes\n### Notes ##\n'
    assert heading_anchors(doc) == {'title', 'notes', 'notes-1', 'notes-2'}


def test_outside_citation_detector_catches_each_form():
    sample = ('x = 1  # see anchors.md C.13\n'
              'y = 2  # spec default\n'
              'z = 3  # the spec' + "'s value\n"
              'w = 4  # docs simdino.md \u00a73.1\n'
              'v = 5  # [R]\n'
              'u = 6  # ../shared/docs\n'
              'spec = importlib.util.spec_from_file_location(name, path)\n'
              'module = importlib.util.module_from_spec(spec)\n'
              'spec.loader.exec_module(module)\n'
              'q = 7  # unspecified order, scipy.special, specific\n'
              't = 8  # the issue' + "'s repro\n"
              's = 9  # as asked in issue 9\n'
              'r = 10  # an upstream GitHub issue, issues, tissue\n')
    assert [n for n, _, _ in outside_citations(sample)] == [1, 2, 3, 4, 5, 6, 11, 12]


# ------------------------------------------------------------------------ the repository
def test_no_file_cites_a_document_outside_the_repository(texts):
    bad = [f'{path}:{n}: {reason}: {line}' for path, text in sorted(texts.items())
           if path != THIS_FILE for n, reason, line in outside_citations(text)]
    assert not bad, 'citations of documents outside the repository:\n' + '\n'.join(bad)


def test_cited_docs_exist(texts):
    bad = sorted({f'{path}: docs/{name}' for path, text in texts.items()
                  for name in DOC_FILE.findall(text) if f'docs/{name}' not in texts})
    assert not bad, 'cited docs that are not in the repository:\n' + '\n'.join(bad)


def test_every_cited_doc_anchor_is_a_heading(texts):
    anchors = {path: heading_anchors(text) for path, text in texts.items()
               if path.startswith('docs/') and path.endswith('.md')}
    cited = 0
    bad = []
    for path, text in sorted(texts.items()):
        if path == THIS_FILE:
            continue
        for name, anchor in DOC_ANCHOR.findall(text):
            cited += 1
            if anchor not in anchors.get(f'docs/{name}', set()):
                bad.append(f'{path}: docs/{name}#{anchor}')
        if path in anchors:
            for anchor in LOCAL_ANCHOR.findall(text):
                cited += 1
                if anchor not in anchors[path]:
                    bad.append(f'{path}: #{anchor}')
    assert cited > 20  # the code, configs and tests do cite the docs
    assert not bad, 'anchors that match no heading:\n' + '\n'.join(bad)
