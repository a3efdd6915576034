"""The documentation site: every page in the nav, every public name in the API reference."""

import importlib
import inspect
import pathlib
import re
import subprocess
import sys

import pytest

import bigbatch_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _public_modules() -> list[str]:
  """bigbatch_jax and its public modules and subpackages (what users import)."""
  package = ROOT / "bigbatch_jax"
  names = [p.stem for p in package.glob("*.py") if not p.stem.startswith("_")]
  names += [p.name for p in package.iterdir() if (p / "__init__.py").exists()]
  return ["bigbatch_jax", *sorted(f"bigbatch_jax.{n}" for n in names)]


def _public_names(module_name: str) -> list[str]:
  """``__all__``, or the module's own public functions and classes."""
  module = importlib.import_module(module_name)
  if hasattr(module, "__all__"):
    return list(module.__all__)
  return [
    name
    for name, value in vars(module).items()
    if not name.startswith("_")
    and (inspect.isfunction(value) or inspect.isclass(value))
    and value.__module__ == module_name
  ]


def test_every_public_module_has_an_api_page():
  documented = set()
  for page in (DOCS / "api").glob("*.md"):
    documented |= set(re.findall(r"^::: ([\w.]+)$", page.read_text(), re.MULTILINE))
  missing = sorted(set(_public_modules()) - documented)
  assert not missing, f"add a docs/api page with '::: NAME' (and a nav line) for {missing}"


def test_every_page_is_in_the_nav():
  nav = set(re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.MULTILINE))
  pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
  assert pages == nav, (
    f"pages not in mkdocs.yml's nav: {sorted(pages - nav)}; missing pages: {sorted(nav - pages)}"
  )


def test_the_readme_sections_in_the_site_hold_no_links_relative_to_the_clone():
  readme = (ROOT / "README.md").read_text()
  sections = re.findall(r"\[start:(\w+)\] -->(.*?)<!-- --8<-- \[end:\1\]", readme, re.DOTALL)
  assert {name for name, _ in sections} >= {"intro", "snippets", "results"}
  for name, text in sections:
    # docs/index.md includes these sections, where a README-relative link breaks.
    assert not re.findall(r"\]\((?!https?:)[^)]*\)", text), f"a relative link in section {name}"


def test_the_changelog_names_this_version_first():
  versions = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
  assert versions and versions[0] == bigbatch_jax.__version__


@pytest.mark.slow
def test_the_built_site_documents_every_public_name(tmp_path):
  pytest.importorskip("mkdocstrings", reason="the [docs] extra: pip install -e '.[docs]'")
  from mkdocstrings import Inventory

  site = tmp_path / "site"
  build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
  result = subprocess.run(build, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  with open(site / "objects.inv", "rb") as f:
    documented = set(Inventory.parse_sphinx(f))
  missing = [
    f"{module}.{name}"
    for module in _public_modules()
    for name in _public_names(module)
    if f"{module}.{name}" not in documented
  ]
  assert not missing, f"public names missing from the API reference: {missing}"
