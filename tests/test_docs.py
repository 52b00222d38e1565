"""The README and the documentation site: the site builds with `mkdocs build --strict` (no broken
link, anchor or page left out of the nav), and the README stays short and true: its two commands
are the ones CI and the scripts run, its command table is the CLI's, its links resolve, and its
results table is the experiment log's."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vdcnn_res.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

QUICKSTART = "bash scripts/quickstart.sh"
TESTS = "bash scripts/setup.sh && .venv/bin/python -m pytest"


def readme() -> str:
    return README.read_text(encoding="utf-8")


def section(text: str, title: str) -> str:
    """The body of the `## title` section of a Markdown text."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"no '## {title}' section"
    return match.group(1)


def commands_of_first_block(text: str) -> list[str]:
    """The commands of the first ```bash block, without their trailing comments."""
    block = re.search(r"```bash\n(.*?)```", text, flags=re.S)
    assert block, "no ```bash block"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def script_commands(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (mkdocs' default) gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slug(h) for h in re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.M)}


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (pip install -e '.[test]')")
def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # every guide, and the start page, became a page of the site
    assert (site / "index.html").is_file()
    for page in (DOCS / "guides").glob("*.md"):
        assert (site / "guides" / page.stem / "index.html").is_file(), page.name
    # theme.font: false, so the site loads no fonts from the network
    html = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html


def test_the_readmes_two_commands_are_what_ci_and_the_scripts_run():
    assert commands_of_first_block(section(readme(), "Two commands on a fresh machine")) == [QUICKSTART, TESTS]
    # CI runs exactly the README's test command, as its last line
    assert script_commands(ROOT / ".ci" / "run")[-1] == TESTS
    # the quick start installs with the same setup script before it trains
    quickstart = script_commands(ROOT / "scripts" / "quickstart.sh")
    assert "bash scripts/setup.sh" in quickstart
    assert any(line.startswith(".venv/bin/vdcnn-res fit") for line in quickstart)
    # the site's pages that repeat the two commands repeat them verbatim
    for page in (DOCS / "index.md", DOCS / "guides" / "getting_started.md"):
        assert commands_of_first_block(page.read_text(encoding="utf-8")) == [QUICKSTART, TESTS], page.name


def test_the_readme_is_read_in_five_minutes():
    lines = readme().count("\n")
    assert lines < 260, f"README.md has {lines} lines; move sections into docs/guides/"


def test_the_readmes_command_table_is_every_subcommand_in_order():
    rows = re.findall(r"^\| `vdcnn-res (\w+)` \| (.+?) \|", section(readme(), "Commands"), flags=re.M)
    assert [name for name, _ in rows] == list(COMMANDS)


def test_the_readmes_links_resolve():
    links = re.findall(r"\]\(([^)\s]+)\)", readme())
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links no guide"
    for link in local:
        target, _, anchor = link.partition("#")
        path = ROOT / target
        assert path.exists(), f"README links {link}: {target} does not exist"
        if anchor:
            assert anchor in anchors(path), f"README links {link}: no such heading in {target}"
    # the start page of the site and every guide are linked from the README
    linked = {link.partition("#")[0] for link in local}
    assert "docs/index.md" in linked
    for page in (DOCS / "guides").glob("*.md"):
        assert f"docs/guides/{page.name}" in linked, f"the README does not link {page.name}"


def test_the_readmes_results_are_the_experiment_logs():
    results = section(readme(), "Results")
    log = (DOCS / "results.md").read_text(encoding="utf-8")
    guide = (DOCS / "guides" / "results.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\w+)[^|]*\|[^|]*\|[^|]*\| \*\*([\d.]+ ± [\d.]+)\*\* \|", results, flags=re.M)
    assert len(rows) == 4, rows
    for dataset, value in rows:
        # the experiment log's row for that split carries the same mean ± sd, as does the guide
        assert re.search(rf"^\| {dataset} \| (\*\*)?{re.escape(value)}(\*\*)? \|", log, flags=re.M), (dataset, value)
        assert value in guide, (dataset, value)
    # and the command that reproduces a row is written next to the table
    assert "vdcnn-res fit --config configs/shared/" in results
