"""The Colab install cell of every chapter installs lmc_lib from the repository that _config.yml names.

    python .ci/colab_install.py           # check: fail when a chapter's cell names another repository
    python .ci/colab_install.py --write   # rewrite the cells from _config.yml (`make sync` does this)

_config.yml's `repository: url, branch` is the one place the repository is set: jupyter-book's
Colab launch button opens the chapter from there, and each chapter's first (hidden) cell installs
lmc_lib from there, through the line

    REPOSITORY, BRANCH = "<repository.url>", "<repository.branch>"

that this script writes and checks.
"""

import re
import sys
from pathlib import Path

import yaml

LINE = re.compile(r'^(\s*)REPOSITORY, BRANCH = "([^"]*)", "([^"]*)"$', re.MULTILINE)


def configured(config: Path = Path("_config.yml")) -> tuple[str, str]:
    """(url, branch) of the repository in the book's configuration."""
    repository = yaml.safe_load(config.read_text())["repository"]
    return repository["url"], repository.get("branch", "main")


def problems(text: str, url: str, branch: str) -> list[str]:
    """What is wrong with a chapter's install line (empty when it names url and branch exactly once)."""
    found = LINE.findall(text)
    if len(found) != 1:
        return [f"expected one line `REPOSITORY, BRANCH = ...`, found {len(found)}"]
    _, named_url, named_branch = found[0]
    if (named_url, named_branch) != (url, branch):
        return [f"installs from {named_url}@{named_branch}, _config.yml names {url}@{branch}"]
    return []


def rewrite(text: str, url: str, branch: str) -> str:
    return LINE.sub(lambda m: f'{m.group(1)}REPOSITORY, BRANCH = "{url}", "{branch}"', text)


def main() -> None:
    url, branch = configured()
    chapters = sorted(Path("notebooks").glob("[0-9]*.md"))
    if "--write" in sys.argv[1:]:
        for chapter in chapters:
            text = chapter.read_text()
            if LINE.search(text) and rewrite(text, url, branch) != text:
                chapter.write_text(rewrite(text, url, branch))
                print(f"{chapter}: install from {url}@{branch}")
    found = [f"{chapter}: {problem}" for chapter in chapters for problem in problems(chapter.read_text(), url, branch)]
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        sys.exit("Colab install cells disagree with _config.yml: run `make sync`")
    print(f"{len(chapters)} Colab install cells install from {url}@{branch}")


if __name__ == "__main__":
    main()
