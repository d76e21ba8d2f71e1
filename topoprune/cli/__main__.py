"""``python -m topoprune.cli``."""
from . import main

if __name__ == "__main__":  # not when a spawned worker process re-imports this module as __mp_main__
    main()
