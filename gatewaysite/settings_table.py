"""The gateway's whole settings table, and the generator of its documentation rows.

``TABLE`` holds every row of the groups below; ``settings.py`` builds the Django settings
from it. ``python -m gatewaysite.settings_table`` prints the generated documentation rows;
``--write`` regenerates them in README.md and docs/monitoring.md
(tests/unit/test_settings_table.py fails while either differs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway_core.conf import ALERTS, CONTRACT, EXTRA, GatewaySettings
from gateway_core.settings_table import Table
from monitoring.conf import AlertSettings

TABLE: Table = Table(GatewaySettings, AlertSettings)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_SECTIONS = (CONTRACT, EXTRA)
# Each document with generated rows, and its tables of them in order.
DOCUMENTS: dict[Path, tuple[str, ...]] = {
    README: README_SECTIONS,
    ROOT / "docs" / "monitoring.md": (ALERTS,),
}


def synced(path: Path) -> str:
    """The document as it should read: its generated rows regenerated from ``TABLE``."""
    return TABLE.sync(path.read_text(), DOCUMENTS[path])


def synced_readme() -> str:
    return synced(README)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="regenerate the documents' rows")
    args = parser.parse_args(argv)
    for path, sections in DOCUMENTS.items():
        if args.write:
            path.write_text(synced(path))
            continue
        for section in sections:
            print(f"<!-- {path.relative_to(ROOT)}: {section} -->")
            print("\n".join(TABLE.rows(section)))


if __name__ == "__main__":
    main()
