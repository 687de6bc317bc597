"""``python -m dance.cli`` (what torchrun launches: ``torchrun ... -m dance.cli run ...``)."""

from dance.cli.app import main

main()
