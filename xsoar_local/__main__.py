import sys

from xsoar_local.cli import main

sys.exit(main())
