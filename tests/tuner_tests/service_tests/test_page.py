"""The runs page as a person meets it: `tuner serve`'s `/` opened in headless Chromium (Debian's,
as tests/reports_tests drives it), its filter form sent as a browser sends it, and a run's
report opened from its link; nothing on the page is fetched from elsewhere."""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

import pytest

import tuner
from tests.reports_tests.test_html import CHROMIUM
from tests.reports_tests.test_html import CHROMIUM_FLAGS

pytestmark = pytest.mark.slow


class _Page(HTMLParser):
    """The rows, links and form fields of a page as Chromium rendered it."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.links: list[str] = []
        self.fields: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "tr" and "data-run" in found:
            self.rows.append(found)
        elif tag == "a":
            self.links.append(found.get("href", ""))
        elif tag in {"input", "select"}:
            self.fields.append(found["name"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def rendered(tmp_path: Path, url: str) -> _Page:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `make test`, which installs it")
    done = subprocess.run(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = _Page()
    page.feed(done.stdout)
    return page


def test_the_runs_page_lists_filters_and_links_each_run_to_its_report(
    served: str, db: str, tmp_path: Path
) -> None:
    page = rendered(tmp_path, f"{served}/")
    assert [row["data-run"] for row in page.rows] == ["2", "1"]
    assert {row["data-status"] for row in page.rows} == {"complete"}
    assert {"/v1/runs/1/report", "/v1/runs/2/report", "/v1/runs/1/map"} <= set(page.links)
    assert not [link for link in page.links if link.startswith(("http:", "https:", "//"))]
    assert page.fields == ["model", "hardware", "status"]

    # The form as a browser sends it: every field, the empty ones too.
    sent = rendered(
        tmp_path, f"{served}/?{urlencode({'model': 'no such model', 'hardware': '', 'status': ''})}"
    )
    assert sent.rows == [] and "no runs match" in sent.text
    sent = rendered(tmp_path, f"{served}/?{urlencode({'model': '', 'hardware': '', 'status': 'complete'})}")
    assert [row["data-run"] for row in sent.rows] == ["2", "1"]
    older = rendered(tmp_path, f"{served}/?limit=1")
    assert [row["data-run"] for row in older.rows] == ["2"] and "/?offset=1&limit=1" in older.links

    report = rendered(tmp_path, f"{served}/v1/runs/1/report")
    assert tuner.get_run(1, db=db).model_name in "".join(report.text)
