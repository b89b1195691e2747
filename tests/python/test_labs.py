"""The labs (labs/*.md) stay runnable: every `./vmxsim ...` line of their sh
blocks runs as written, from the repository root, against this build, with
its out/ directories moved to a temporary place."""

import os
import re
import shlex
import subprocess

import pytest

from conftest import BUILD, REPO

LABS = sorted((REPO / "labs").glob("lab*.md"))
HEADINGS = ("## Before you start", "## Background", "## What you should have found", "## Going further")


def commands(path):
    text = path.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        out += [line.strip() for line in block.splitlines() if line.strip().startswith("./vmxsim ")]
    return out


def test_there_are_labs():
    assert LABS, "no labs/lab*.md"


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_lab_has_the_sections_and_commands(lab):
    text = lab.read_text(encoding="utf-8")
    assert text.startswith("# Lab ")
    for h in HEADINGS:
        assert h in text, f"{lab.name} lacks {h!r}"
    assert len(commands(lab)) >= 3


def quoted_figures(path):
    """The exact figures a lab quotes as results: comma-grouped integers in
    "What you should have found" not introduced as approximate ("about",
    "~", "≈", "some") — each must be a value the lab's commands produce."""
    text = path.read_text(encoding="utf-8")
    # Every "What you should have found" section (a lab's, or a part's under
    # a ### heading), each up to the next heading.
    found = "".join(re.findall(r"^#{2,3} What you should have found[^\n]*\n(.*?)(?=^#{1,3} |\Z)", text, re.S | re.M))
    figures = set()
    for m in re.finditer(r"\b\d{1,3}(?:,\d{3})+\b", found):
        before = found[max(0, m.start() - 16):m.start()]
        if not re.search(r"(about|~|≈|some)\s*$", before, re.I):
            figures.add(m.group(0))
    return figures


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_every_command_of_the_lab_runs(lab, tmp_path):
    env = dict(os.environ, VMXSIM_BUILD_DIR=str(BUILD))
    printed = ""
    for line in commands(lab):
        args = [str(tmp_path / a) if a.startswith("out/") else a for a in shlex.split(line)]
        r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{lab.name}: `{line}` failed:\n{r.stderr[-2000:]}"
        printed += r.stdout
    # The figures the lab quotes are today's: every exact one appears among
    # the numbers its commands print or write (statistics, tables, summaries).
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".csv", ".txt", ".md", ".yaml"):
            printed += f.read_text(encoding="utf-8", errors="replace")
    produced = set(re.findall(r"\d+", printed))
    stale = sorted(q for q in quoted_figures(lab) if q.replace(",", "") not in produced)
    assert not stale, (f"{lab.name} quotes figures its commands no longer produce: {', '.join(stale)} "
                       "(refresh them, or say \"about\" where a figure is derived)")
