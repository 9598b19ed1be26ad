import sys

from xenforge.cli.app import main

sys.exit(main())
