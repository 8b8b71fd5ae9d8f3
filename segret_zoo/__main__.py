import sys

from segret_zoo.cli import main

sys.exit(main())
