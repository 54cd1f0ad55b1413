"""``python -m peftkit`` runs the command line."""

from peftkit.cli.main import main

raise SystemExit(main())
