"""The documentation a newcomer reads lives in the repository and says what works."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _reference_snippet() -> str:
    reference = (REPO / "docs" / "api-reference.md").read_text()
    return re.search(r"```js\n(.*?)```", reference, re.DOTALL).group(1)


def test_readme_links_stay_inside_the_repository():
    assert "../shared" not in README and "the reference's Node snippet" not in README
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), target


def test_the_node_snippet_is_the_references_verbatim():
    assert _reference_snippet() in (REPO / "docs" / "verify_webhook.js").read_text()
    assert (
        "require('../docs/verify_webhook.js')"
        in (REPO / "tests" / "webhook_receiver.js").read_text()
    )


def test_readme_says_the_hmac_key_is_the_whole_secret():
    assert re.search(r"HMAC key is the whole `whsec_…` string", README)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_snippet_accepts_a_signature_made_with_the_whole_secret():
    secret = "whsec_" + "A1b2" * 8
    body = json.dumps({"id": "evt_1", "type": "job.completed"}, separators=(",", ":"))
    signature = hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    script = (
        "const {verifySignature} = require(process.argv[1]);"
        "const req = {headers: {'x-retroiva-signature': process.argv[2]},"
        " body: JSON.parse(process.argv[3])};"
        "process.stdout.write(String(verifySignature(req)));"
    )
    for key, expected in ((secret, "true"), (secret.removeprefix("whsec_"), "false")):
        result = subprocess.run(
            ["node", "-e", script, str(REPO / "docs" / "verify_webhook.js"), signature, body],
            env={"WEBHOOK_SECRET": key},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.stdout == expected, result


def test_make_demo_is_documented():
    assert "make demo" in README


def _drawing() -> str:
    section = README.split("## How it works", 1)[1]
    return re.search(r"```\n(.*?)```", section, re.DOTALL).group(1)


def _first_docstring_line(package: Path) -> str:
    import ast

    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    assert docstring, f"{package.relative_to(REPO)} has no docstring to say what it holds"
    return docstring.splitlines()[0]


ROOTS = ("serve_app", "pipelines", "models", "vocabulary", "retroiva_client")


def test_the_structure_drawing_shows_every_rooms_own_docstring():
    """Issue 14: rooms whose names say what they hold, each with a one-line docstring
    that README's drawing shows; a new folder fails this until it is drawn."""
    drawing = _drawing()
    packages = [
        init.parent
        for root in ROOTS
        for init in sorted((REPO / root).rglob("__init__.py"))
        if "static" not in init.parts and "templates" not in init.parts
    ]
    assert len(packages) >= 10
    for package in packages:
        line = _first_docstring_line(package)
        name = package.name + "/"
        drawn = [row for row in drawing.splitlines() if row.strip().startswith(name)]
        assert drawn, f"{name} is missing from README's structure drawing"
        assert drawn[0].split(None, 1)[1] == line, (
            f"README draws {name} as {drawn[0].split(None, 1)[1]!r}, its docstring says {line!r}"
        )


def _imports(root: str) -> set[str]:
    import ast

    found: set[str] = set()
    for path in (REPO / root).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("root", "never"),
    [
        ("vocabulary", {"serve_app", "pipelines", "models", "retroiva_client"}),
        ("models", {"serve_app", "pipelines", "retroiva_client"}),
        ("pipelines", {"serve_app", "retroiva_client"}),
        ("retroiva_client", {"serve_app", "pipelines", "models", "vocabulary"}),
    ],
)
def test_arrows_point_one_way(root: str, never: set[str]):
    """serve_app → pipelines → models, all → vocabulary; the client stands alone."""
    assert not _imports(root) & never, f"{root} imports {sorted(_imports(root) & never)}"
