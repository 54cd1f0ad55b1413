"""``python -m peftkit``: the command line (with no command it runs ``peftkit train``, the built-in job)."""

from peftkit.cli.main import main

raise SystemExit(main())
