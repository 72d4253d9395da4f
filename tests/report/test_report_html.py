"""HTML report: every expected figure present, fully self-contained."""
from __future__ import annotations

import base64
import re

import pytest

from pcert.runtime.report import write_report
from pcert.runtime.report.html import ALT_ENSEMBLE, ALT_METRICS, ALT_PLANE, ALT_WIDTH
from report_fixtures import ensemble_record, single_record


def _images(html: str) -> dict[str, bytes]:
    found = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', html)
    return {alt: base64.b64decode(data) for alt, data in found}


def _self_contained(html: str) -> None:
    lowered = html.lower()
    for forbidden in ("http://", "https://", 'src="file', "<script", "<link", "url("):
        assert forbidden not in lowered, forbidden
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', html))


@pytest.mark.parametrize("make, expected, absent", [
    (single_record, {ALT_METRICS, ALT_WIDTH, ALT_PLANE}, {ALT_ENSEMBLE}),
    (lambda: single_record(plane=False), {ALT_METRICS, ALT_WIDTH}, {ALT_PLANE, ALT_ENSEMBLE}),
    (ensemble_record, {ALT_METRICS, ALT_ENSEMBLE}, {ALT_WIDTH, ALT_PLANE}),
])
def test_figures_present_and_self_contained(tmp_path, make, expected, absent):
    record = make()
    html = (write_report(record, tmp_path) / "report.html").read_text()
    images = _images(html)
    assert expected <= set(images) and not absent & set(images)
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000 for png in images.values())
    _self_contained(html)
    for metric in record.summary:
        assert f"<th>{metric}</th>" in html
    assert "gate &#x27;" in html and record.plan_hash in html


def test_spec_text_is_escaped(tmp_path):
    record = single_record(plane=False)
    record.spec_text += '# <script>alert(1)</script> <img src=x>\n'
    html = (write_report(record, tmp_path) / "report.html").read_text()
    _self_contained(html)
    assert "&lt;script" in html
