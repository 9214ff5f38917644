"""The explorer's shipped files: exactly what scripts/vendor-graphiql produced from the
pinned npm packages, their licences included, and a page that names only our files."""

from __future__ import annotations

import hashlib
import json
import re
import runpy
import tomllib
from pathlib import Path

from gateway.web.explorer import (
    ASSETS_PREFIX,
    CONTENT_SECURITY_POLICY,
    OWN_FILES,
    PAGE,
    VENDOR_FILES,
    files_dir,
    page_policy,
)

ROOT = Path(__file__).resolve().parents[2]
VENDOR = files_dir() / "vendor"


def script_pins() -> dict[str, tuple[str, str]]:
    return runpy.run_path(str(ROOT / "scripts" / "vendor-graphiql"))["PINS"]


def test_the_vendored_files_are_those_the_pins_produced() -> None:
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())
    assert set(manifest["files"]) | {"MANIFEST.json"} == {p.name for p in VENDOR.iterdir()}
    assert {p.name for p in VENDOR.iterdir()} == VENDOR_FILES
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert {name: (entry["version"], entry["integrity"])
            for name, entry in manifest["packages"].items()} == script_pins()


def test_every_shipped_package_has_its_licence() -> None:
    licences = (VENDOR / "THIRD-PARTY-LICENSES.txt").read_text()
    for name, (version, _) in script_pins().items():
        section = re.search(rf"^{re.escape(name)}@{re.escape(version)} \((\S+)\)\n=+\n(.+?)\n",
                            licences, re.MULTILINE)
        assert section is not None, name
        assert section.group(1) == "MIT" and "MIT License" in section.group(2), name
    # GraphiQL's build bundles its dependencies: theirs are listed too.
    for bundled in ("graphql@", "codemirror@", "@graphiql/react@"):
        assert f"\n{bundled}" in licences, bundled


def test_the_page_names_only_the_explorers_own_files() -> None:
    page = (files_dir() / PAGE).read_text()
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert referenced, page
    for url in referenced:
        assert url.startswith((ASSETS_PREFIX, "/static/")), url
        if url.startswith(ASSETS_PREFIX):
            name = url.removeprefix(ASSETS_PREFIX)
            assert name in OWN_FILES | VENDOR_FILES, name
            assert (files_dir() / name).is_file() or (VENDOR / name).is_file(), name
    assert "<script>" not in page and "style=" not in page  # nothing inline
    assert "http" not in CONTENT_SECURITY_POLICY
    assert "'unsafe" not in page_policy("n0nce") and "'nonce-n0nce'" in page_policy("n0nce")


def test_the_explorer_files_are_package_data() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["gateway.web"]
    assert "graphiql/*" in patterns and "graphiql/vendor/*" in patterns
