"""The chat page's third-party files (web/vendor/) are exactly the pinned npm releases its manifest names, and
the page loads them from this origin (no CDN)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "web"
VENDOR = WEB / "vendor"
MANIFEST = json.loads((VENDOR / "manifest.json").read_text())


def test_every_vendored_file_matches_its_manifest_hash() -> None:
    listed: set[str] = set()
    for package in MANIFEST["packages"]:
        assert re.fullmatch(r"\d+\.\d+\.\d+", package["version"]), package  # an exact version, never a range
        assert package["tarball"].endswith(f"/{package['name']}-{package['version']}.tgz"), package
        assert package["integrity"].startswith("sha512-"), package
        for name, entry in package["files"].items():
            digest = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
            assert digest == entry["sha256"], f"web/vendor/{name} is not the file of {package['name']} " \
                                              f"{package['version']}: re-vendor it (web/vendor/README.md)"
            listed.add(name)
    on_disk = {p.name for p in VENDOR.iterdir()} - {"manifest.json", "README.md"}
    assert on_disk == listed, f"files in web/vendor/ without a manifest entry, or missing: {on_disk ^ listed}"


def test_each_script_announces_the_version_the_manifest_pins() -> None:
    versions = {p["name"]: p["version"] for p in MANIFEST["packages"]}
    assert f"marked v{versions['marked']}" in (VENDOR / "marked.umd.js").read_text()[:300]
    assert f"DOMPurify {versions['dompurify']}" in (VENDOR / "purify.min.js").read_text()[:300]


def test_the_page_loads_its_scripts_from_this_origin_only() -> None:
    html = (WEB / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S)
    sources = [re.search(r'src="([^"]+)"', attrs).group(1) for attrs, _ in scripts]  # type: ignore[union-attr]
    assert sources == ["vendor/marked.umd.js", "vendor/purify.min.js", "markdown.js", "sso.js", "app.js"]
    assert all(body.strip() == "" for _, body in scripts), "inline script: the CSP forbids it"
    assert all((WEB / s).is_file() for s in sources)
    assert "http://" not in html and "https://" not in html and " style=" not in html
