"""``python -m minivpn`` is the same as the ``minivpn`` command."""

from minivpn.cli.main import main

raise SystemExit(main())
