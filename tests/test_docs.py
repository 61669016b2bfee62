"""Docs that cannot rot: the site builds in strict mode, and every shell and Python block of README.md and
docs/ runs as written, page by page, or says in the page why it cannot.

A block runs in a temporary folder holding `examples/` (the repository's) and `examples.h5` (the examples
featurized, as README's first command makes it). A block that cannot run there (a GPU, a cluster, an API
key, hours of CPU) carries `<!-- not-run: REASON -->` on the line before it. ```text blocks show output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from helpers.screening_data import SRSCREEN, one_thread  # noqa: F401 - fixture

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
RUNNABLE = {"bash", "python"}
SHOWN = {"text"}  # output and file layouts: shown, never run
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(\S.*?)\s*-->")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)


@dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str
    not_run: str | None  # the reason, when the page marks the block not runnable

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line} ({self.language})"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.fullmatch(before.strip())
        found.append(Block(page, text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2),
                           reason.group(1) if reason else None))
    return found


def page_id(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


def test_every_block_is_runnable_or_says_why_not():
    """A block is bash or python (run unless marked), or text (output); an unlabelled or other block would
    escape both the runner and the marker."""
    problems = []
    for page in PAGES:
        for block in blocks(page):
            if block.language not in RUNNABLE | SHOWN:
                problems.append(f"{block}: label the block bash, python or text")
            elif block.language in SHOWN and block.not_run:
                problems.append(f"{block}: a text block is never run; drop its not-run marker")
    assert not problems, "\n".join(problems)
    counts = {lang: sum(b.language == lang and not b.not_run for p in PAGES for b in blocks(p)) for lang in RUNNABLE}
    assert counts["bash"] >= 5 and counts["python"] >= 4, f"the runnable examples went missing: {counts}"


def test_readme_test_command_is_the_one_ci_runs():
    """.ci/run takes the first README line that starts with `pip install torch==2.13.0 ` and holds pytest."""
    lines = [ln for ln in (REPO_ROOT / "README.md").read_text().splitlines()
             if re.match(r"^pip install torch==2\.13\.0 .*pytest", ln)]
    assert lines and "[test,plot,docs]" in lines[0].replace('"', "").replace("'", ""), lines


@pytest.fixture(scope="module")
def featurized(tmp_path_factory) -> Path:
    """examples/structures featurized as README's first command does it."""
    from helpers.screening_data import cli

    out = tmp_path_factory.mktemp("examples") / "examples.h5"
    result = cli("featurize", REPO_ROOT / "examples" / "structures", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    return out


def run_shell(block: Block, folder: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    bin_dir = str(Path(SRSCREEN[0]).parent) if len(SRSCREEN) == 1 else None
    if bin_dir is None:  # no `srscreen` script installed beside this Python: a function of that name
        prelude = f'srscreen() {{ "{sys.executable}" -c "from srscreen.cli import main; main()" "$@"; }}\n'
    else:
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        prelude = ""
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", prelude + block.code], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{block} failed (exit {proc.returncode}):\n{block.code}\n--- stdout\n" \
                                 f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def check_api_examples(session: dict, printed: str, folder: Path) -> None:
    """docs/api.md's whole-path example: the top 5 by formation energy, printed in order; the fine-tuned
    model records where it started."""
    ranking = session["ranking"]
    ef = ranking.values["formation_energy_per_atom"]
    assert len(ranking) == 5 and list(ef) == sorted(ef)
    assert all(id_ in printed for id_ in ranking.ids)
    assert (folder / "my-ef.pt").exists() and session["tuned"].model_file.training["finetuned_from"] == "sr-cgcnn-ef"


PAGE_CHECKS = {"docs/api.md": check_api_examples}


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(not b.not_run and b.language in RUNNABLE for b in blocks(p))],
                         ids=page_id)
def test_page_examples_run(page, featurized, tmp_path, monkeypatch, capsys, one_thread):
    """The page's runnable blocks, in order, as a reader pastes them: shell blocks in bash, Python blocks
    in one interpreter session, all in one folder."""
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    shutil.copy(featurized, tmp_path / "examples.h5")
    monkeypatch.chdir(tmp_path)
    session: dict = {}
    for block in blocks(page):
        if block.not_run or block.language not in RUNNABLE:
            continue
        if block.language == "bash":
            run_shell(block, tmp_path)
        else:
            exec(compile(block.code, str(block), "exec"), session)
    check = PAGE_CHECKS.get(page_id(page))
    if check:
        check(session, capsys.readouterr().out, tmp_path)


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page missing from the nav or an API name that does
    not resolve fails the build."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install '.[docs]' (CI installs it)")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed: pip install '.[docs]' (CI installs it)")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO_ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    commands = (tmp_path / "site" / "cli" / "index.html").read_text()
    for name in ("featurize", "predict", "finetune", "merge"):  # the generated command reference
        assert f'id="{name}"' in commands, name
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "TrainConfig" in api and "load_model" in api
    assert (tmp_path / "site" / "figures" / "depth_sweep.png").exists()
