"""Every ```python block of README.md runs as written (in order, each in a fresh namespace, with the real data).

A block that cannot run here (it needs the network, a GPU, a cluster or minutes of CPU) carries, on the line right
before its fence, ``<!-- readme-test: skip (the reason) -->``; the reason is required and shown as the skip reason.
``<!-- readme-test: continue -->`` runs a block in the namespace of the block before it. Blocks added to the README
later are picked up by the same rule.
"""

import os
import re
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARK = re.compile(r"^<!--\s*readme-test:\s*(skip|continue)\s*(?:\((.*)\))?\s*-->\s*$")
# A block that needs more CPU time than this (seconds, all threads; wall time depends on the machine's load) is too
# slow for CI: shorten it (fewer folds, a cache) or mark it skipped with the reason.
BLOCK_CPU_SECONDS = 90


def readme_blocks(text):
    """``[(line, code, mark, reason)]`` of every ```python block: its first code line, source and readme-test mark."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        lang, start = m.group(1), i + 1
        j = start
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        if lang == "python":
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            mark = _MARK.match(prev.strip())
            blocks.append((start + 1, "\n".join(lines[start:j]) + "\n", mark.group(1) if mark else None,
                           (mark.group(2) or "").strip() if mark else ""))
        i = j + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def test_the_block_reader_and_its_marks():
    text = "\n".join([
        "intro", "```python", "a = 1", "```", "", "<!-- readme-test: skip (needs internet: weights) -->",
        "```python", "b = 2", "```", "```bash", "ls", "```", "<!-- readme-test: continue -->", "```python", "c = a",
        "```", "```", "plain", "```",
    ])
    assert readme_blocks(text) == [(3, "a = 1\n", None, ""), (8, "b = 2\n", "skip", "needs internet: weights"),
                                   (15, "c = a\n", "continue", "")]


def test_readme_blocks_compile_and_every_skip_says_why():
    assert BLOCKS, "README.md has no python blocks"
    for line, code, mark, reason in BLOCKS:
        compile(code, f"README.md:{line}", "exec")  # a syntax error fails here, without the data
        assert mark != "skip" or reason, f"README.md:{line}: a skipped block must say why: readme-test: skip (reason)"
    assert BLOCKS[0][2] is None and "load_image_folder" in BLOCKS[0][1], "the first block shows a folder of images"
    assert BLOCKS[1][2] is None and "SKLEARN_AIS_DATA" in README.read_text(encoding="utf-8").split(BLOCKS[1][1])[0][-600:]


@pytest.fixture(scope="module")
def namespaces():
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_readme_block_runs(index, namespaces, tmp_path_factory, monkeypatch):
    line, code, mark, reason = BLOCKS[index]
    if mark == "skip":
        pytest.skip(f"README.md:{line}: {reason}")
    data = os.environ.get("SKLEARN_AIS_DATA")
    if not data or not (Path(data) / "kriegeskorte92").is_dir():
        pytest.skip("real data folder not available (set SKLEARN_AIS_DATA)")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("SKLEARN_AIS_DATA", str(Path(data).resolve()))
    # Every block runs in one folder per README (a block may use the files an earlier one wrote, as a reader would).
    cwd = namespaces.setdefault("cwd", tmp_path_factory.mktemp("readme"))
    monkeypatch.chdir(cwd)
    ns = namespaces.get(index - 1) if mark == "continue" else None
    ns = dict(ns) if ns is not None else {"__name__": "__readme__"}
    t0 = time.process_time()
    try:
        exec(compile(code, f"README.md:{line}", "exec"), ns)
    finally:
        if "dask" in sys.modules:  # a block's dask.config.set(...) must not reach the tests that run after it
            sys.modules["dask"].config.refresh()
    cpu = time.process_time() - t0
    print(f"README.md:{line}: {cpu:.1f} s of CPU")
    namespaces[index] = ns
    assert cpu < BLOCK_CPU_SECONDS, f"README.md:{line} took {cpu:.0f} s of CPU; keep README blocks short"
