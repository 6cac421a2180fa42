"""The README and docs/ as a newcomer reads them: every relative link resolves, the Python example runs."""

import glob
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(REPO, "README.md"), os.path.join(REPO, "CHANGELOG.md")] + sorted(
    glob.glob(os.path.join(REPO, "docs", "*.md"))
)
FENCED_CODE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def relative_links(path: str) -> list[str]:
    """Link targets of a Markdown file outside code blocks, without web, mail or in-page (#) links."""
    with open(path, encoding="utf-8") as handle:
        text = FENCED_CODE.sub("", handle.read())
    targets = LINK.findall(text)
    return [t for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_resolves(page):
    assert os.path.exists(page)
    missing = []
    for target in relative_links(page):
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
        if not os.path.exists(resolved):
            missing.append(target)
    assert not missing, f"{os.path.relpath(page, REPO)}: links to missing files: {missing}"


def test_link_check_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](x.md) ![b](img/y.png) [web](https://e.org) [c](#top)\n```\n[d](in-code.md)\n```\n")
    assert relative_links(str(page)) == ["x.md", "img/y.png"]


def test_readme_python_example_runs(tmp_path):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        blocks = re.findall(r"^```python\n(.*?)^```", handle.read(), re.S | re.M)
    assert blocks, "the README has no Python example"
    for block in blocks:
        result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "model.pdb").stat().st_size > 0
