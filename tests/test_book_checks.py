"""The book's HTML checks (.ci/check_book.py) catch each kind of defect in a small bad page, and pass a good one."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / ".ci" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_book = load("check_book")
execute_notebook = load("execute_notebook")
colab_install = load("colab_install")

GOOD = """<html><head><script defer src="../_static/mathjax/tex-chtml.js?v=1"></script></head><body><article>
<h1>Chapter</h1>
<p>The barrier <span class="math notranslate nohighlight">\\(\\mathcal{B}\\)</span>.</p>
<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>
<figure id="fig-x"><img src="../_images/x.svg"/><figcaption><p><span class="caption-number">Fig. 1.1 </span>
<span class="caption-text">Loss along the path.</span></p></figcaption></figure>
<div class="cell tag_parameters"><pre>scale = "book"</pre></div>
</article></body></html>"""


def page(body: str, head: str = '<script defer src="../_static/mathjax/tex-chtml.js"></script>') -> str:
    return f"<html><head>{head}</head><body><article>{body}</article></body></html>"


def test_a_good_page_passes():
    assert check_book.check_page(GOOD) == []


@pytest.mark.parametrize("body", [
    "<p>| method | a | b |\n|---|---|---|---|\n| vanilla | 1 | 2 |</p>",  # header 3 cells, rule 4: stays a paragraph
    "<p>| --- | --- |</p>",
])
def test_a_table_left_as_pipes_in_a_paragraph_is_caught(body):
    assert any("did not render" in problem for problem in check_book.check_page(page(body)))


def test_a_pipe_in_prose_is_not_a_table():
    assert check_book.check_page(page("<p>the norm |x| of x, and |y|</p>")) == []


def test_a_tab_inside_a_formula_is_caught():
    problems = check_book.check_page(page('<p><span class="math">\\(d_\text{head}\\)</span></p>'))
    assert problems == ["TAB inside a formula: '\\\\(d_\\text{head}\\\\)'"]


def test_control_characters_in_a_source_are_caught_with_their_line():
    assert check_book.check_source("# Title\n$d_\text{head}$\n") == ["line 2: TAB: '$d_\\text{head}$'"]
    assert check_book.check_source("fine\r\nalso fine\n") == []


@pytest.mark.parametrize("body", [
    '<div class="cell_output"><img src="../_images/plot.png"/></div>',
    '<figure><img src="../_images/plot.png"/></figure>',  # a figure without a numbered caption
])
def test_an_image_without_a_numbered_caption_is_caught(body):
    assert any("not a numbered, captioned figure" in problem for problem in check_book.check_page(page(body)))


@pytest.mark.parametrize("body, what", [
    ('<div class="cell tag_injected-parameters"><pre># Parameters\nscale = "ci"</pre></div>', "papermill"),
    ("<pre># NBVAL_CHECK_OUTPUT\nprint(error)</pre>", "nbval"),
    ('<pre>if "google.colab" in sys.modules:</pre>', "Colab"),
])
def test_visible_scaffolding_is_caught(body, what):
    assert any(what in problem for problem in check_book.check_page(page(body)))


@pytest.mark.parametrize("head", [
    '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>',
    '<script src="//cdnjs.cloudflare.com/ajax/libs/KaTeX/0.16.0/katex.min.js"></script>',
])
def test_math_from_a_cdn_is_caught(head):
    problems = check_book.check_page(page('<p><span class="math">\\(x\\)</span></p>', head=head))
    assert any("from the network" in problem for problem in problems)
    assert any("no bundled MathJax" in problem for problem in problems)


def test_a_bundled_script_that_is_missing_is_caught(tmp_path):
    html = tmp_path / "chapter.html"
    problems = check_book.check_page(page('<p><span class="math">\\(x\\)</span></p>'), html)
    assert problems == ["bundled MathJax missing: ../_static/mathjax/tex-chtml.js"]


def test_papermill_cell_is_tagged_remove_cell():
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('scale = "book"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell('scale = "ci"', metadata={"tags": ["injected-parameters"]}),
    ])
    assert execute_notebook.hide_injected_parameters(notebook) == 1
    tags = [cell.metadata["tags"] for cell in notebook.cells]
    assert tags == [["parameters"], ["injected-parameters", "remove-cell"]]


def test_colab_install_line_is_checked_and_rewritten_from_the_configuration():
    text = 'if x:\n    REPOSITORY, BRANCH = "https://github.com/old/repo", "dev"\n'
    url, branch = "https://github.com/lmc-lib/lmc_lib", "main"
    assert colab_install.problems(text, url, branch) == [
        "installs from https://github.com/old/repo@dev, _config.yml names https://github.com/lmc-lib/lmc_lib@main"]
    fixed = colab_install.rewrite(text, url, branch)
    assert colab_install.problems(fixed, url, branch) == []
    assert fixed.startswith("if x:\n    REPOSITORY")
    missing = colab_install.problems("no install cell", url, branch)
    assert missing == ["expected one line `REPOSITORY, BRANCH = ...`, found 0"]
