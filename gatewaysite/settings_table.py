"""The gateway's whole settings table, and the generator of its documentation rows.

``TABLE`` holds every row of the groups below; ``settings.py`` builds the Django settings
from it. ``python -m gatewaysite.settings_table`` prints the README's generated rows;
``--write`` regenerates them in README.md (tests/unit/test_settings_table.py fails while the
README differs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway_core.conf import CONTRACT, EXTRA, GatewaySettings
from gateway_core.settings_table import Table
from monitoring.conf import AlertSettings

TABLE: Table = Table(GatewaySettings, AlertSettings)

README = Path(__file__).resolve().parent.parent / "README.md"
README_SECTIONS = (CONTRACT, EXTRA)


def synced_readme() -> str:
    """README.md as it should read: its generated rows regenerated from ``TABLE``."""
    return TABLE.sync(README.read_text(), README_SECTIONS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="regenerate README.md's rows")
    args = parser.parse_args(argv)
    if args.write:
        README.write_text(synced_readme())
        return
    for section in README_SECTIONS:
        print(f"<!-- {section} -->")
        print("\n".join(TABLE.rows(section)))


if __name__ == "__main__":
    main()
