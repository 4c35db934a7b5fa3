import sys

from scoreboard.cli import main

sys.exit(main())
