"""Every series the service exports is named in the README's Observability section: the
operators' one list, checked against the registry the metrics endpoint serves."""

from __future__ import annotations

from pathlib import Path

from vregistry_server.runtime.metrics import REGISTRY

README = Path(__file__).resolve().parents[2] / "README.md"


def _observability_section() -> str:
    text = README.read_text()
    start = text.index("## Observability")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_every_exported_metric_is_named_in_the_readme() -> None:
    section = _observability_section()
    families = list(REGISTRY.collect())
    assert families
    missing = [
        name
        for family in families
        if f"`{(name := family.name + ('_total' if family.type == 'counter' else ''))}`"
        not in section
    ]
    assert not missing, f"README 'Observability' does not name {missing}"
