"""README.md and docs/: every relative link resolves, and every command line they show uses only flags
that exist.

Command lines are read from fenced code blocks: ``namegen SUB ...`` (also ``.venv/bin/namegen``,
``python -m namegen SUB``), ``python train.py|sample.py|evaluate.py|compare.py ...``, and the same
behind ``torchrun ...`` or ``srun ...``. Each flag must be an option of that command's parser, taken
from ``namegen.cli`` as the command line builds it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT
from namegen.cli import build_parser

README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = {"train.py": "train", "sample.py": "sample", "evaluate.py": "evaluate", "compare.py": "compare"}
LAUNCHERS = {"namegen", "python", "python3", "torchrun", "srun"}
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def subcommand_parsers() -> dict:
    """``{"train": parser, ...}``: the subcommands' parsers exactly as ``namegen`` builds them."""
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return dict(sub.choices)


PARSERS = subcommand_parsers()


# ----------------------------------------------------------------------------- reading markdown


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def split_markdown(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str, str]]]:
    """(prose lines, code lines): ``(line number, text)`` outside fences and ``(line number, language,
    text)`` inside them."""
    prose, code, fence, lang = [], [], None, ""
    for number, line in enumerate(text.splitlines(), 1):
        if m := FENCE.match(line):
            if fence is None:
                fence, lang = m.group(1), line.strip()[3:].strip()
            elif line.strip().startswith(fence):
                fence = None
            continue
        (code.append((number, lang, line)) if fence else prose.append((number, line)))
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|_", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for _, line in prose if (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line))}


def link_problems(path: Path) -> list[str]:
    problems = []
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    for number, line in prose:
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            where = f"{_rel(path)}:{number}: link {target}"
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            if not resolved.exists():
                problems.append(f"{where}: {file_part} does not exist")
            elif path.is_relative_to(ROOT) and not resolved.is_relative_to(ROOT):
                problems.append(f"{where}: points outside the repository")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: {_rel(resolved)} has no heading #{anchor}")
    return problems


# ----------------------------------------------------------------------------- command lines


def command_lines(path: Path) -> list[tuple[int, str]]:
    """The shell lines of the fenced blocks (not Python, YAML or JSON ones), continuation lines joined;
    in ``console`` blocks only the lines after a ``$`` prompt."""
    _, code = split_markdown(path.read_text(encoding="utf-8"))
    lines, pending, start = [], "", 0
    for number, lang, line in code:
        if lang in ("python", "py", "pycon", "yaml", "json"):
            continue
        if not pending:
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    return lines


def parse_command(line: str) -> tuple[str, list[str]] | None:
    """(subcommand, its arguments) of a namegen command line, or None for any other command."""
    tokens = shlex.split(line, comments=True)
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):  # VAR=value before the command
        tokens.pop(0)
    if not tokens or not (tokens[0] in LAUNCHERS or tokens[0].endswith(("/namegen", "/python"))):
        return None
    for i, token in enumerate(tokens):
        if Path(token).name in SCRIPTS:
            return SCRIPTS[Path(token).name], tokens[i + 1:]
        if Path(token).name == "namegen" and (i == 0 or tokens[i - 1] == "-m" or tokens[0] in ("srun", "torchrun")
                                              or token.endswith("/namegen")):
            return (tokens[i + 1] if i + 1 < len(tokens) else ""), tokens[i + 2:]
    return None


def flag_problems(path: Path) -> list[str]:
    problems = []
    for number, line in command_lines(path):
        where = f"{_rel(path)}:{number}: `{line.strip()}`"
        try:
            parsed = parse_command(line)
        except ValueError as exc:  # shlex: an unclosed quote
            problems.append(f"{where}: cannot be read as a shell line ({exc})")
            continue
        if parsed is None:
            continue
        command, args = parsed
        if command not in PARSERS:
            problems.append(f"{where}: namegen has no subcommand {command!r} (it has {', '.join(PARSERS)})")
            continue
        options = PARSERS[command]._option_string_actions
        for arg in args:
            flag = arg.split("=", 1)[0]
            if flag.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", flag) and flag not in options:
                problems.append(f"{where}: `{command}` has no flag {flag}")
    return problems


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    problems = link_problems(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_shown_exists_in_its_parser(path):
    problems = flag_problems(path)
    assert not problems, "command lines with flags their command does not have:\n" + "\n".join(problems)


def test_the_checker_sees_the_command_forms_the_docs_use(tmp_path):
    """The forms above are recognised (so a page cannot slip a wrong flag past the check)."""
    assert parse_command("namegen train --model small --bogus") == ("train", ["--model", "small", "--bogus"])
    assert parse_command(".venv/bin/namegen sample --ckpt x") == ("sample", ["--ckpt", "x"])
    assert parse_command("python -m namegen export --ckpt a --out b") == ("export", ["--ckpt", "a", "--out", "b"])
    assert parse_command("python compare.py --train small  # comment --nope") == ("compare", ["--train", "small"])
    assert parse_command("torchrun --nnodes 2 train.py --devices 4") == ("train", ["--devices", "4"])
    assert parse_command("srun python train.py --num-nodes 2") == ("train", ["--num-nodes", "2"])
    assert parse_command("WANDB_MODE=offline namegen evaluate --json") == ("evaluate", ["--json"])
    assert parse_command("python examples/onnx_sample.py small.onnx -n 20") is None
    assert parse_command("make train") is None
    page = tmp_path / "page.md"
    page.write_text("See [this](missing.md) and [that](#nowhere).\n\n# A heading\n\n```bash\n"
                    "namegen train --model small --epochs 3 \\\n    --lr 1e-3\npython sample.py --nope\n"
                    "namegen trian --model small\n```\n", encoding="utf-8")
    flags, links = flag_problems(page), link_problems(page)
    assert len(flags) == 3, flags
    assert "`train` has no flag --epochs" in flags[0] and "`sample` has no flag --nope" in flags[1]
    assert "no subcommand 'trian'" in flags[2]
    assert len(links) == 2 and "missing.md does not exist" in links[0] and "no heading #nowhere" in links[1]
    (tmp_path / "ok.md").write_text("[up](#a-heading), [there](page.md#a-heading)\n\n# A heading\n")
    assert link_problems(tmp_path / "ok.md") == []


def test_readme_is_a_front_page():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"
    headings = [line for line in lines if line.startswith("## ")]
    for heading in ("## Quick start", "## How the sizes compare", "## Documentation"):
        assert heading in headings
    assert "<!-- compare:start -->" in text and "<!-- compare:end -->" in text  # compare --update-readme
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", text))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages missing from README's list: {sorted(pages - linked)}"


@pytest.mark.parametrize("path", DOC_FILES[1:], ids=lambda p: p.name)
def test_each_docs_page_opens_with_what_the_reader_will_be_able_to_do(path):
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    assert lines[0].startswith("# ") and "you will" in lines[1], f"{path.name}: {lines[1]!r}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_paths_of_the_machine_that_wrote_them(path):
    text = path.read_text(encoding="utf-8")
    assert "../shared" not in text
    found = re.findall(r"(?<![\w.])/(?:work|home|root|tmp|Users)/[^\s`)]*", text)
    assert not found, f"{path.name} names this machine's paths: {found}"
