"""``python -m topoprune.cli``."""
from . import main

main()
