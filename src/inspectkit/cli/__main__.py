"""``python -m inspectkit.cli``: the ``inspectkit`` command."""

from inspectkit.cli.main import main

raise SystemExit(main())
