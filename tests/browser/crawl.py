"""Visit every page a dashboard links to (same origin), checking each as a user would see it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .conftest import Browsing

#: Every button the dashboard may show, and the test that clicks it. A button not listed
#: here fails the crawl: no control ships without a test that it does something.
KNOWN_BUTTONS = {
    "ping-button": "test_ping_* (the round trip or the device's error)",
    "logs-button": "test_*logs* (opens the live logs of the chosen service)",
    "log-stop": "test_*logs* (closes the stream)",
    "filter": "test_filters_* (filters on the server)",
    "log out": "test_login_at_the_real_issuer_then_log_out (ends the session)",
}


@dataclass
class CrawlResult:
    pages: list[str] = field(default_factory=list)
    buttons: set[str] = field(default_factory=set)


def _kind(path: str) -> str:
    parts = [p for p in urlsplit(path).path.split("/") if p]
    return "/".join(parts[:1] + (["*"] if len(parts) > 1 else []) + parts[2:])


def crawl(browsing: Browsing, *, start: str = "/", per_kind: int = 8, limit: int = 80,
          skip: tuple[str, ...] = (), check: Callable[[str], None] | None = None) -> CrawlResult:
    """Breadth-first over ``a[href]``; at most ``per_kind`` pages of each shape
    (``devices/*``, ``deployments/*``...), a screenshot of each."""
    result = CrawlResult()
    queue, seen = [start], {start}
    kinds: Counter[str] = Counter()
    while queue and len(result.pages) < limit:
        path = queue.pop(0)
        kinds[_kind(path)] += 1
        if kinds[_kind(path)] > per_kind:
            continue
        browsing.goto(path)
        result.pages.append(path)
        if check is not None:
            check(path)
        if kinds[_kind(path)] == 1:  # one screenshot of each kind of page
            browsing.shot(f"crawl{path}")
        hrefs = browsing.page.eval_on_selector_all(
            "a[href]", "els => els.map(e => e.getAttribute('href'))")
        for href in hrefs:
            assert href.startswith("/"), f"{path} links outside the dashboard: {href}"
            assert not href.startswith("//"), f"{path} links outside the dashboard: {href}"
            target = href.split("#")[0]
            if target not in seen and not target.startswith(skip):
                seen.add(target)
                queue.append(target)
        names = browsing.page.eval_on_selector_all(
            "button", "els => els.map(e => (e.id || e.textContent.trim()).toLowerCase())")
        result.buttons.update(names)
        assert browsing.page.locator("nav.sidebar").count() == 1, path
    unknown = result.buttons - set(KNOWN_BUTTONS)
    assert not unknown, f"buttons no test clicks: {unknown}"
    return result
