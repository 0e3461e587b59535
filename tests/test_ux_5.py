"""The user's experience, end to end: what README and docs/ say against what the CLI and the Python API do.

Every ``exporter ...`` command the documentation or the help shows must parse with the real parser, README's CLI
synopsis must name every option of every command (and no other), the exit codes the errors use must all be
documented, and the Python API's names must behave the same however often a notebook calls them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The user-facing documents whose ``exporter ...`` commands must run as written.
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "ios_harness" / "README.md", ROOT / "exporter" / "report" / "SCHEMA.md"]


def _commands() -> dict:
    from exporter.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {"": parser, **sub.choices}


def _options(parser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings} - {"-h", "--help"}


GLOBAL = {"--debug", "-q", "--quiet", "-v", "--verbose"}


def _readme_synopsis() -> dict[str, str]:
    """README's CLI block, as {command: its text (continuation lines included)}."""
    text = README.read_text(encoding="utf-8")
    block = text.split("## CLI", 1)[1].split("```", 2)[1]
    out: dict[str, str] = {}
    current = ""
    for line in block.splitlines():
        m = re.match(r"exporter (\w+)", line)
        if m:
            current = m.group(1)
        elif line.startswith("global options"):
            current = ""
        out[current] = out.get(current, "") + " " + line.split("#", 1)[0]
    return out


def test_readme_cli_synopsis_names_every_option_of_every_command_and_nothing_else():
    """The synopsis lacked convert's --calibration-count, validate's --trust-code and the data-aware palette
    variants; a user reading it could not know they exist."""
    from exporter.capabilities import FORMATS, variant_names

    commands = _commands()
    synopsis = _readme_synopsis()
    assert set(synopsis) - {""} == set(commands) - {""}, "every command has a line in README's CLI block"
    for name, text in synopsis.items():
        named = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", text)) - {"-"}
        have = _options(commands[name]) - (GLOBAL if name else set())
        unknown = named - _options(commands[name])
        assert not unknown, f"README names options `exporter {name}` does not have: {unknown}"
        assert have <= named, f"README's synopsis of `exporter {name}` lacks {have - named}"
    convert = synopsis["convert"]
    listed = convert.split("--variants", 1)[1].split("]", 1)[0].split()
    assert sorted(listed) == sorted(variant_names()), "README lists every variant --variants takes"
    assert convert.split("--formats", 1)[1].split("]", 1)[0].split() == list(FORMATS)


def _doc_commands() -> list[tuple[str, list[str]]]:
    """Every complete ``exporter ...`` command in a code block of the docs, and the examples of every --help."""
    found: list[tuple[str, list[str]]] = []
    for doc in DOCS:
        blocks = doc.read_text(encoding="utf-8").split("```")[1::2]
        for block in blocks:
            if block.startswith("\nexporter convert MODEL"):  # README's synopsis: checked above
                continue
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    if words and Path(words[0]).name == "exporter":
                        found.append((f"{doc.name}: {part.strip()}", words[1:]))
    for name, parser in _commands().items():
        for line in (parser.epilog or "").splitlines():
            if line.strip().startswith("exporter "):
                found.append((f"exporter {name} --help: {line.strip()}", shlex.split(line)[1:]))
    return found


def test_every_exporter_command_in_the_docs_and_the_help_parses(capsys):
    from exporter.cli import _parser

    found = _doc_commands()
    assert len(found) >= 15, found  # README, ios_harness/README.md and every command's examples
    for where, argv in found:
        try:
            _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: {capsys.readouterr().err.strip().splitlines()[-1]}")


def test_every_option_the_docs_mention_exists():
    """An option named in running text (`--calibration-count`, `--float-input`) is one the CLI has."""
    every = set().union(*(_options(p) for p in _commands().values())) | {"--help"}
    # options of other programs the docs show: pytest-xdist, pip, and the generator scripts under benchmarks/
    others = {"--dist", "--readme", "--write", "--families", "--files", "--models", "--rows", "--check", "--before"}
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for opt in set(re.findall(r"`[^`]*?(?<![\w-])(--[a-z][a-z0-9-]*)", text)):
            assert opt in every | others, f"{doc.name} names {opt}, which no exporter command has"


def test_every_exit_code_is_documented_in_readme_and_the_help():
    from exporter import errors
    from exporter.cli import EXAMPLES, INTERNAL_ERROR

    codes = {c.exit_code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ExporterError)}
    codes |= {0, INTERNAL_ERROR, 130, 143}
    readme = " ".join(README.read_text(encoding="utf-8").split("Exit codes:", 1)[1].split("**Safety.**")[0].split())
    help_line = " ".join(EXAMPLES.split("exit codes:", 1)[1].split())
    for code in sorted(codes):
        assert re.search(rf"(^|[;/] ?){code}\b", readme), f"README's exit codes lack {code}"
        assert re.search(rf"(^|[;/] ?){code}\b", help_line), f"`exporter --help` exit codes lack {code}"


def test_exporter_xcode_is_the_api_function_also_after_its_package_is_imported(tmp_path):
    """``exporter.xcode(...)`` (README's Python API) is both the API function and the subpackage exporter.xcode.
    Python sets the package attribute once anything in exporter.xcode is imported (api.xcode itself imports it),
    so a notebook's second call found a module: TypeError "'module' object is not callable"."""
    code = (
        "import exporter\n"
        "for attempt in range(2):\n"
        "    try:\n"
        "        exporter.xcode({0!r}, {1!r}, images={0!r})\n"
        "    except exporter.ExporterError as exc:\n"
        "        print(type(exc).__name__)\n"
        "import exporter.xcode.package\n"
        "print(callable(exporter.xcode))\n"
    ).format(str(tmp_path / "no_export"), str(tmp_path / "pkg"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["DestinationError", "DestinationError", "True"]
