"""``python -m rsst`` runs the CLI (from a source checkout: ``PYTHONPATH=. python -m rsst``)."""

from rsst.cli import main

main()
