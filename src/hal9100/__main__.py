import sys

from hal9100.cli import main

sys.exit(main())
