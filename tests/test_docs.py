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
